"""Reward functions and sources: closed forms, resolution by name and path, errors by row."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import rewards


def text(name, completions, **columns):
    fn = rewards.resolve(name).fn
    return fn(prompts=["p"] * len(completions), completions=completions, **columns)


def test_text_functions_closed_forms():
    assert text("exact_match", [" 42 ", "41"], answer=["42", "42"]) == [1.0, 0.0]
    got = text("numeric_match", ["so 1,234.", "x=7 then 8", "none"], answer=["#### 1234"] * 3)
    assert got == [1.0, 0.0, 0.0]
    assert text("numeric_match", ["-0.5"], answer=["-.5"]) == [1.0]
    good = "<think>a\nb</think> <answer>3</answer>"
    assert text("format_match", [good, "3", good + " more"]) == [1.0, 0.0, 0.0]
    rep = text("repetition_penalty", ["a b c d", "a b a b a b", "a b"])
    np.testing.assert_allclose(rep, [0.0, -(1 - 2 / 4), 0.0])
    with pytest.raises(ValueError, match=r"needs a 'answer' column.*\['solution'\]"):
        text("exact_match", ["1"], solution=["1"])


def test_kwargs_and_dotted_paths_resolve():
    fmt = rewards.resolve("format_match", {"pattern": r"\d+"})
    assert fmt.kind == "text" and fmt.fn(prompts=["p"], completions=["12"]) == [1.0]
    by_path = rewards.resolve("rlhf_jax.rewards.functions:exact_match")
    assert by_path.kind == "text" and by_path.name == "rlhf_jax.rewards.functions:exact_match"
    tokens = rewards.resolve("rlhf_jax.rewards.functions.length_penalty")
    assert tokens.kind == "tokens"  # a registered function keeps its kind under its path
    with pytest.raises(ValueError, match="not a registered name"):
        rewards.resolve("no_such_reward")
    with pytest.raises(ValueError, match="not importable"):
        rewards.resolve("no_such_module.fn")


def test_token_functions_against_numpy():
    mask = np.array([[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0], [1] * 6], bool)
    p = jnp.zeros((3, 2), jnp.int32)
    r = jnp.zeros((3, 6), jnp.int32)
    length = jax.jit(rewards.length_penalty)(p, p > 0, r, jnp.asarray(mask))
    np.testing.assert_allclose(length, -mask.sum(-1) / 6)
    over = rewards.resolve("overlong_penalty", {"max_length": 5, "cache_length": 2}).fn
    got = jax.jit(over)(p, p > 0, r, jnp.asarray(mask))
    # |y| = 2 ≤ 3: 0; |y| = 5: (3 − 5) / 2 = −1 at L_max; |y| = 6 > 5: −1.
    np.testing.assert_allclose(got, [0.0, -1.0, -1.0])
    four = jnp.asarray(np.arange(6)[None] < 4)
    np.testing.assert_allclose(over(p[:1], p[:1] > 0, r[:1], four), [-0.5])
    with pytest.raises(ValueError, match="cache_length"):
        rewards.overlong_penalty(p, p > 0, r, jnp.asarray(mask), cache_length=9)


def test_sources_sum_with_weights_and_name_bad_rows():
    config = rewards.RewardsConfig(
        functions=("exact_match", "format_match", "length_penalty"),
        weights=(2.0, 0.5, 1.0),
        kwargs={"format_match": {"pattern": r"\d+"}},
    )
    sources = rewards.resolve_sources(config)
    total, parts = rewards.score_texts(sources, ["p", "q"], ["1", "x"], {"answer": ["1", "2"]})
    np.testing.assert_allclose(total, [2.5, 0.0])  # the token function runs in the program
    assert set(parts) == {"exact_match", "format_match"}

    def broken(*, prompts, completions, **_):
        return [1.0, float("nan")]

    def short(*, prompts, completions, **_):
        return [1.0]

    for fn, match in (
        (broken, r"'broken': completion 1 \(prompt row 7\) got nan"),
        (short, "returned 1 values for 2 rows"),
    ):
        wf = rewards.WeightedFunction(rewards.RewardFunction(fn.__name__, "text", fn), 1.0)
        with pytest.raises(ValueError, match=match):
            rewards.score_texts([wf], ["p", "q"], ["a", "b"], {}, rows=[3, 7])
    with pytest.raises(ValueError, match="weights"):
        rewards.RewardsConfig(functions=("exact_match",), weights=(1.0, 2.0))
    with pytest.raises(ValueError, match=r"neither in rewards\.functions nor registered"):
        rewards.RewardsConfig(kwargs={"format_mach": {}})
    # Options of a registered function that is not listed are kept for when it is.
    assert rewards.RewardsConfig(kwargs={"format_match": {"pattern": "x"}}).kwargs


def test_monitor_feature_functions():
    completions = ["I think you're right, maybe.", "Perhaps. PERHAPS!", "thinking of mayhem"]
    assert rewards.hedging(prompts=[""] * 3, completions=completions) == [2.0, 2.0, 0.0]
    assert rewards.agreement(prompts=[""] * 3, completions=completions) == [1.0, 0.0, 0.0]
    assert rewards.agreement(prompts=[""], completions=["so true"], phrases=["so true"]) == [1.0]
    with pytest.raises(ValueError, match="hedging: phrases must be a non-empty list"):
        rewards.hedging(prompts=[""], completions=["x"], phrases="maybe")
    prompts = ["what is the capital of france", [{"role": "user", "content": "a b c d"}]]
    out = rewards.prompt_overlap(
        prompts=prompts, completions=["the capital of france is paris", "a b c x"], n=2
    )
    # 2-grams: (the capital) (capital of) (of france) in the prompt, (france is) (is paris) not
    assert out == [3 / 5, 2 / 3]
    assert rewards.prompt_overlap(prompts=["a b"], completions=["a"], n=2) == [0.0]
    for name in ("hedging", "agreement", "prompt_overlap"):
        assert rewards.REGISTRY[name].kind == "text"
