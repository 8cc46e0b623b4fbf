"""The embedded synthetic task (rlhf_jax.synthetic): data, gold reward, raters, tokenizer."""

import dataclasses
import functools
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import data
from rlhf_jax.synthetic import EOS_ID, SyntheticTask, SyntheticTaskConfig
from rlhf_jax.synthetic import task as synthetic

TASK = SyntheticTask()


def task(**overrides) -> SyntheticTask:
    return SyntheticTask(SyntheticTaskConfig(**overrides))


@functools.cache
def tokenizer():
    import tempfile

    return TASK.write_tokenizer(tempfile.mkdtemp(prefix="rlhf_jax_synthetic_tok_"))


def random_responses(t: SyntheticTask, n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(t.symbols, size=rng.integers(1, 9))) for _ in range(n)]


# ---- data ------------------------------------------------------------------------------------


def test_every_generator_is_deterministic_per_seed():
    a, b, other = task(seed=3), task(seed=3), task(seed=4)
    for make in (
        lambda t: t.prompts(50),
        lambda t: t.prompts(50, split="eval"),
        lambda t: t.pretraining_corpus(50),
        lambda t: t.demonstrations(50),
    ):
        assert make(a) == make(b)
        assert make(a) != make(other)
    ps = a.prompts(40)
    ra, rb = random_responses(a, 40, 0), random_responses(a, 40, 1)
    assert a.label_pairs(ps, ra, rb, seed=7)[0] == b.label_pairs(ps, ra, rb, seed=7)[0]
    assert a.label_pairs(ps, ra, rb)[0] == b.label_pairs(ps, ra, rb)[0]  # the config's seed


def test_prompts_are_distinct_prefix_stable_and_train_eval_disjoint():
    train, eval_ = TASK.prompts(3000), TASK.prompts(1000, split="eval")
    assert len(set(train)) == 3000 and len(set(eval_)) == 1000
    assert not set(train) & set(eval_)
    assert TASK.prompts(100) == train[:100]
    assert {TASK.split_of(p) for p in train} == {"train"}
    assert {TASK.split_of(p) for p in eval_} == {"eval"}
    # The corpora only use training prompts, so eval prompts are never seen in training.
    demo_prompts = {r["prompt"] for r in TASK.demonstrations(2000)}
    assert {TASK.split_of(p) for p in demo_prompts} == {"train"}
    seen = {r["completion"].split(" = ")[0] for r in TASK.pretraining_corpus(1000)}
    assert not seen & {p.removesuffix(" =") for p in eval_}
    # Every configured instruction and prompt length occurs.
    assert {p.split()[0] for p in train} == set(synthetic.INSTRUCTIONS)
    assert {len(p.split()) - 2 for p in train} == set(range(3, 7))


def test_prompts_raise_when_the_split_is_too_small():
    small = task(alphabet_size=2, min_length=1, max_length=1, instructions=("copy",))
    with pytest.raises(ValueError, match="distinct train prompts"):
        small.prompts(5)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="alphabet_size"):
        SyntheticTaskConfig(alphabet_size=40)
    with pytest.raises(ValueError, match="instructions"):
        SyntheticTaskConfig(instructions=("shout",))
    with pytest.raises(ValueError, match="demo_corruption"):
        SyntheticTaskConfig(demo_corruption=1.5)
    with pytest.raises(ValueError, match="rater_temperature"):
        SyntheticTaskConfig(rater_temperature=-1.0)


def test_demonstrations_are_middling_between_random_and_ideal():
    rows = TASK.demonstrations(3000)
    prompts, completions = [r["prompt"] for r in rows], [r["completion"] for r in rows]
    demo = TASK.gold_reward(prompts, completions).mean()
    ideal = TASK.gold_reward(prompts, [TASK.ideal_response(p) for p in prompts]).mean()
    rand = TASK.gold_reward(prompts, random_responses(TASK, 3000, 0)).mean()
    assert ideal == 1.0
    assert rand < -0.5 < 0.25 < demo < 0.6 < ideal
    # The corruption rate sets the quality, monotonically.
    cleaner = task(demo_corruption=0.1).demonstrations(3000)
    clean_gold = TASK.gold_reward(
        [r["prompt"] for r in cleaner], [r["completion"] for r in cleaner]
    ).mean()
    assert demo < clean_gold < ideal


def test_pretraining_texts_run_examples_together():
    for row in TASK.pretraining_corpus(200):
        assert row["prompt"] == ""
        words = row["completion"].split()
        assert words.count("=") == 2
        assert sum(w in synthetic.INSTRUCTIONS for w in words) == 2
        assert words[0] in synthetic.INSTRUCTIONS


# ---- gold reward -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt,response,gold",
    [
        ("sort 3 1 4 =", "1 3 4", 1.0),
        ("reverse 3 1 4 =", "4 1 3", 1.0),
        ("copy 3 1 4 =", "3 1 4", 1.0),
        ("sort 3 1 4 =", "1 3 5", 2 * 2.5 / 3 - 1),  # a near miss earns half
        ("sort 3 1 4 =", "1 3 7", 2 * 2 / 3 - 1),
        ("sort 3 1 4 =", "1 3 4 4", 2 * 3 / 4 - 1),  # one token too long
        ("sort 3 1 4 =", "1 3", 2 * 2 / 3 - 1),  # one token too short
        ("sort 3 1 4 =", "1 3 4 <eos> 9 9", 1.0),  # text after EOS is not the response
        ("sort 3 1 4 =", "", -1.0),
        ("sort 3 1 4 =", "sort = <unk> banana", -1.0),  # garbage
        ("sort 3 1 4 =", "3 1 4", 2 * 1 / 3 - 1),  # parroting the prompt
    ],
)
def test_gold_reward_closed_forms(prompt, response, gold):
    np.testing.assert_allclose(TASK.gold_reward([prompt], [response]), [gold], rtol=1e-12)


def test_gold_reward_penalises_no_eos_and_is_monotone_in_correct_tokens():
    prompt = "copy 5 6 7 8 9 ="
    np.testing.assert_allclose(
        TASK.gold_reward([prompt, prompt], ["5 6 7 8 9"] * 2, ended=[True, False]), [1.0, 0.0]
    )
    # Replace correct symbols by far-off ones one at a time: r* falls by 2/5 each time.
    symbols = "5 6 7 8 9".split()
    responses = [" ".join("0" if i < k else s for i, s in enumerate(symbols)) for k in range(6)]
    gold = TASK.gold_reward([prompt] * 6, responses)
    np.testing.assert_allclose(np.diff(gold), -0.4, rtol=1e-12)


def test_gold_reward_rejects_malformed_prompts():
    with pytest.raises(ValueError, match="not '<copy"):
        TASK.gold_reward(["shuffle 1 2 ="], ["1 2"])
    with pytest.raises(ValueError, match="3 prompts but 2 responses"):
        TASK.gold_reward(["copy 1 ="] * 3, ["1"] * 2)


def random_token_batch(seed: int, b: int = 64, p: int = 12, r: int = 10, left_pad: bool = True):
    """Prompts from the task (padded left or right) and random responses over the whole
    vocabulary (EOS, BOS, pad and symbols alike) with a random number of valid tokens."""
    rng = np.random.default_rng(seed)
    prompts = TASK.prompts(b, split="eval" if seed % 2 else "train")
    tok = tokenizer()
    prompt_ids = np.full((b, p), synthetic.PAD_ID, np.int32)
    prompt_mask = np.zeros((b, p), bool)
    for i, text in enumerate(prompts):
        ids = tok(text)["input_ids"]
        where = slice(p - len(ids), p) if left_pad else slice(0, len(ids))
        prompt_ids[i, where], prompt_mask[i, where] = ids, True
    # Mostly symbols, sometimes EOS or other specials, so every case of the formula occurs.
    weights = np.ones(TASK.vocab_size)
    weights[: len(synthetic.SPECIALS) + 1 + len(synthetic.INSTRUCTIONS)] = 0.2
    weights[EOS_ID] = 1.0
    response_ids = rng.choice(TASK.vocab_size, size=(b, r), p=weights / weights.sum())
    response_mask = np.arange(r)[None, :] < rng.integers(0, r + 1, size=b)[:, None]
    words = [
        " ".join(tok.convert_ids_to_tokens(row[m].tolist()))
        for row, m in zip(response_ids, response_mask, strict=True)
    ]
    ended = [EOS_ID in row[m] for row, m in zip(response_ids, response_mask, strict=True)]
    expected = TASK.gold_reward(prompts, words, ended=ended)
    arrays = (prompt_ids, prompt_mask, response_ids.astype(np.int32), response_mask)
    return arrays, expected


@pytest.mark.parametrize("left_pad", [True, False])
def test_token_gold_reward_equals_the_string_one(left_pad):
    chex.clear_trace_counter()
    gold_fn = jax.jit(chex.assert_max_traces(TASK.gold_reward_tokens, n=1))  # once per shape
    covered = []
    for seed in range(4):
        arrays, expected = random_token_batch(seed, left_pad=left_pad)
        eager = np.asarray(TASK.gold_reward_tokens(*map(jnp.asarray, arrays)))
        jitted = np.asarray(gold_fn(*arrays))
        assert jitted.dtype == np.float32 and jitted.shape == expected.shape
        np.testing.assert_allclose(eager, expected, atol=1e-6)
        np.testing.assert_allclose(jitted, expected, atol=1e-6)
        covered.append(expected)
    covered = np.concatenate(covered)
    # The random data reached: no EOS (< -1), empty or all wrong (-1), partial credit.
    assert (covered < -1).any() and (covered == -1).any() and ((covered > -1) & (covered < 1)).any()


@pytest.mark.parametrize(
    ("prompt", "response", "echo"),
    [
        ("copy 1 2 3 =", "1 2 3", 1.0),  # copying is echoing (and right)
        ("reverse 1 2 3 =", "1 2 3", 1.0),  # echoing where it is wrong
        ("sort 3 1 2 =", "1 2 3", 0.0),  # right, and no symbol where the prompt had it
        ("copy 1 2 =", "1 2 2 2", 0.5),  # 2 of 4 words; the extra ones match nothing
        ("copy 1 2 =", "", 0.0),
        ("copy 1 2 =", "1 <eos> 2", 1.0),  # up to EOS only
    ],
)
def test_echo_rate_closed_forms(prompt, response, echo):
    assert TASK.echo_rate([prompt], [response])[0] == echo


@pytest.mark.parametrize("left_pad", [True, False])
def test_token_echo_rate_equals_the_string_one(left_pad):
    tok = tokenizer()
    echo_fn = jax.jit(TASK.echo_rate_tokens)
    seen = []
    for seed in range(4):
        arrays, _ = random_token_batch(seed, left_pad=left_pad)
        prompt_ids, prompt_mask, response_ids, response_mask = arrays
        prompts = [
            " ".join(tok.convert_ids_to_tokens(row[m].tolist())[1:])  # without BOS
            for row, m in zip(prompt_ids, prompt_mask, strict=True)
        ]
        words = [
            " ".join(tok.convert_ids_to_tokens(row[m].tolist()))
            for row, m in zip(response_ids, response_mask, strict=True)
        ]
        # Random responses rarely echo: copy the prompt's symbols into some of them.
        for i in range(0, len(prompts), 3):
            x = [t for t in prompt_ids[i][prompt_mask[i]] if TASK.symbol_value_V[t] >= 0]
            k = min(len(x), int(response_mask[i].sum()))
            response_ids[i, np.flatnonzero(response_mask[i])[:k]] = x[:k]
            words[i] = " ".join(
                tok.convert_ids_to_tokens(response_ids[i][response_mask[i]].tolist())
            )
        expected = TASK.echo_rate(prompts, words)
        got = np.asarray(echo_fn(prompt_ids, prompt_mask, response_ids, response_mask))
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=1e-6)
        seen.append(expected)
    seen = np.concatenate(seen)
    assert (seen == 0).any() and (seen == 1).any() and ((seen > 0) & (seen < 1)).any()


def test_token_gold_reward_of_ideal_responses_is_one():
    tok = tokenizer()
    prompts = TASK.prompts(32, split="eval")
    p, r = TASK.max_prompt_tokens, TASK.max_response_tokens
    prompt_ids, prompt_mask = np.zeros((32, p), np.int32), np.zeros((32, p), bool)
    response_ids, response_mask = np.zeros((32, r), np.int32), np.zeros((32, r), bool)
    for i, prompt in enumerate(prompts):
        ids = tok(prompt)["input_ids"]
        prompt_ids[i, p - len(ids) :], prompt_mask[i, p - len(ids) :] = ids, True
        ids = [*tok(TASK.ideal_response(prompt), add_special_tokens=False)["input_ids"], EOS_ID]
        response_ids[i, : len(ids)], response_mask[i, : len(ids)] = ids, True
    gold = jax.jit(TASK.gold_reward_tokens)(prompt_ids, prompt_mask, response_ids, response_mask)
    np.testing.assert_array_equal(np.asarray(gold), np.ones(32, np.float32))


# ---- raters ----------------------------------------------------------------------------------


@functools.cache
def pairs(n: int = 3000):
    """Two demonstration-quality responses (independently corrupted) to each of n prompts."""
    prompts = TASK.prompts(n)
    rng = np.random.default_rng(0)

    def noisy(p):
        return TASK.noisy_response(p, rng, rate=0.4)

    return prompts, [noisy(p) for p in prompts], [noisy(p) for p in prompts]


def labels(**overrides):
    return task(**overrides).label_pairs(*pairs(), seed=0)


def test_noiseless_raters_agree_with_gold_and_rows_are_preference_rows():
    rows, info = labels(rater_temperature=0.0)
    assert info["agreement"] == 1.0 and info["num_gold_ties"] > 0
    distinct = info["gold_a"] != info["gold_b"]
    assert (info["gold_margin"][distinct] > 0).all()
    prompts, a, b = pairs()
    for row, pa, ra, rb, pick in zip(rows, prompts, a, b, info["a_chosen"], strict=True):
        assert row == {"prompt": pa, "chosen": ra if pick else rb, "rejected": rb if pick else ra}
    np.testing.assert_allclose(
        info["gold_margin"],
        TASK.gold_reward(prompts, [r["chosen"] for r in rows])
        - TASK.gold_reward(prompts, [r["rejected"] for r in rows]),
    )
    assert set(info["rater"]) == {"gold"}
    assert data.detect_kind(rows[0]) == "preference"


def test_rater_noise_disagreement_and_random_labels_lower_agreement():
    sharp, noisy = labels(rater_temperature=0.05)[1], labels(rater_temperature=0.5)[1]
    dissent = labels(rater_temperature=0.05, disagreement=0.5)[1]
    careless = labels(rater_temperature=0.05, random_label_rate=0.5)[1]
    assert 0.95 < sharp["agreement"] < 1.0
    assert noisy["agreement"] < sharp["agreement"] - 0.1
    assert dissent["agreement"] < sharp["agreement"] - 0.02
    assert careless["agreement"] < sharp["agreement"] - 0.15
    assert 0.35 < np.mean(dissent["rater"] == "dissent") < 0.65
    np.testing.assert_array_equal(careless["p_a"][careless["rater"] == "random"], 0.5)


def test_length_bias_makes_longer_responses_win_more_than_gold_says():
    plain, biased = labels(rater_temperature=0.1)[1], labels(rater_temperature=0.1, length_bias=0.3)
    biased = biased[1]
    assert abs(plain["longer_chosen"] - plain["longer_better_by_gold"]) < 0.05
    assert biased["longer_chosen"] > biased["longer_better_by_gold"] + 0.1


def test_agreement_bias_rewards_parroting_the_prompt():
    plain = labels(rater_temperature=0.1)[1]
    biased = labels(rater_temperature=0.1, agreement_bias=0.3)[1]
    assert abs(plain["parroting_chosen"] - plain["parroting_better_by_gold"]) < 0.05
    assert biased["parroting_chosen"] > biased["parroting_better_by_gold"] + 0.05
    # The statistic the bias rewards, by hand.
    stats = TASK.response_stats(["reverse 1 2 3 =", "reverse 1 2 3 ="], ["1 2 3 4", "3 2 1"])
    assert stats["length"].tolist() == [4, 3] and stats["prompt_matches"].tolist() == [3, 1]


def test_label_pairs_checks_lengths():
    with pytest.raises(ValueError, match="one pair per prompt"):
        TASK.label_pairs(["copy 1 ="], ["1"], [], seed=0)


# ---- tokenizer and lengths -------------------------------------------------------------------


def test_tokenizer_round_trips_every_string_within_small_lengths(tmp_path):
    tok = TASK.write_tokenizer(tmp_path / "tok")
    reloaded = __import__("transformers").AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert len(reloaded) == TASK.vocab_size <= 64
    assert (reloaded.pad_token, reloaded.bos_token, reloaded.eos_token, reloaded.unk_token) == (
        "<pad>",
        "<bos>",
        "<eos>",
        "<unk>",
    )
    prompts = TASK.prompts(300) + TASK.prompts(300, split="eval")
    texts = {
        "prompt": prompts,
        "ideal": [TASK.ideal_response(p) for p in prompts],
        "demo": [r["completion"] for r in TASK.demonstrations(300)],
        "pretraining": [r["completion"] for r in TASK.pretraining_corpus(300)],
    }
    # Sequences as the data pipeline builds them: BOS + prompt, response + EOS, BOS + text + EOS.
    with_bos = {"prompt": True, "ideal": False, "demo": False, "pretraining": True}
    limits = {
        "prompt": TASK.max_prompt_tokens,
        "ideal": TASK.max_response_tokens - 1,
        "demo": TASK.max_response_tokens - 1,
        "pretraining": TASK.max_pretraining_tokens - 1,
    }
    assert TASK.max_prompt_tokens + TASK.max_response_tokens <= 32
    assert TASK.max_pretraining_tokens <= 32
    for kind, strings in texts.items():
        for text in strings:
            ids = reloaded(text, add_special_tokens=with_bos[kind])["input_ids"]
            assert (ids[0] == synthetic.BOS_ID) == with_bos[kind], text
            assert synthetic.UNK_ID not in ids, text
            assert len(ids) <= limits[kind], (kind, text)
            assert reloaded.decode(ids, skip_special_tokens=True) == text
            assert tok(text, add_special_tokens=with_bos[kind])["input_ids"] == ids


def test_rows_load_through_the_data_pipeline(tmp_path):
    tok = tokenizer()
    # Pairs of two equal responses carry no preference (the pipeline drops them, and the data
    # layer counts them as identical_responses): the first 200 distinct pairs.
    keep = [i for i, (x, y) in enumerate(zip(*pairs()[1:], strict=True)) if x != y][:200]
    prompts, a, b = ([xs[i] for i in keep] for xs in pairs())
    prefs, _ = TASK.label_pairs(prompts, a, b, seed=0)
    for kind, rows, bucket in [
        ("sft", TASK.pretraining_corpus(200), TASK.max_pretraining_tokens),
        ("sft", TASK.demonstrations(200), TASK.max_prompt_tokens + TASK.max_response_tokens),
        ("preference", prefs, TASK.max_prompt_tokens + TASK.max_response_tokens),
    ]:
        ds = data.tokenize_rows(rows, tok, kind=kind, bucket_lengths=(bucket,), strict=True)
        assert len(ds) == 200 and not ds.report.counts
    path = synthetic.write_jsonl(tmp_path / "demos.jsonl", TASK.demonstrations(5))
    with open(path, encoding="utf-8") as f:
        assert [json.loads(line) for line in f] == TASK.demonstrations(5)


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TASK.config.seed = 1
