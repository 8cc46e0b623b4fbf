"""AI feedback (Constitutional AI): the constitution file, prompt templates, label maths
(position swap, principle ensembles, CoT clamping, agreement) by hand, the judge on a real
model, and SL-CAI's critique → revision rounds."""

import json
import math

import numpy as np
import pytest
from model_testing import ARCHS

from rlhf_jax import sharding as sharding_lib
from rlhf_jax.inference import Scorer
from rlhf_jax.models import from_hf_dict
from rlhf_jax.placement import ModelSource, place_model
from rlhf_jax.synthetic import feedback as language
from rlhf_jax.synthetic.task import SyntheticTask, SyntheticTaskConfig
from rlhf_jax.training import feedback as fb

YAML = """
principles:
  - name: harmless
    critique: Point out anything harmful.
    revision: Remove anything harmful.
    comparison: Which response is less harmful?
  - name: honest
    critique: Point out anything untrue.
    revision: Make it true.
    comparison: Which response is more honest?
stop: ["\\n\\nHuman:"]
"""


def test_constitution_reads_yaml_and_json_and_renders_the_templates(tmp_path):
    (tmp_path / "c.yaml").write_text(YAML)
    c = fb.load_constitution(tmp_path / "c.yaml")
    assert c.names == ("harmless", "honest") and c.options == ("A", "B")
    raw = {"principles": [vars(p) for p in c.principles], "options": ["X", "Y"]}
    (tmp_path / "c.json").write_text(json.dumps(raw))
    assert fb.load_constitution(tmp_path / "c.json").options == ("X", "Y")
    p = c.principle("honest")
    assert c.comparison_prompt("Hi?", "Yes.", "No.", p) == (
        "Consider the following conversation between a human and an assistant:\n\n"
        "Human: Hi?\n\nWhich response is more honest?\nOptions:\n(A) Yes.\n(B) No.\n"
        "The answer is: ("
    )
    assert c.critique_prompt("Hi?", "Yes.", p) == (
        "Human: Hi?\n\nAssistant: Yes.\n\nCritique request: Point out anything untrue.\n\nCritique:"
    )
    assert c.revision_prompt("Hi?", "Yes.", p, "It is false.").endswith(
        "Critique: It is false.\n\nRevision request: Make it true.\n\nRevision:"
    )
    assert c.trim(" fine.\n\nHuman: more") == "fine."
    assert c.subset(["honest"]).names == ("honest",)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r["principles"][1].pop("critique"), r"principles\[1\]\.critique"),
        (lambda r: r["principles"][1].update(name="harmless"), "'harmless' is used twice"),
        (lambda r: r["principles"][0].update(extra=1), r"principles\[0\]: unknown keys"),
        (lambda r: r.update(options=["A", "A"]), "options: the two options are the same"),
        (lambda r: r.update(templates={"comparison": "{prompt} {x}"}), "unknown fields"),
        (lambda r: r.update(templates={"critique": "{prompt}"}), "missing fields"),
        (lambda r: r.update(few_shot={"judge": "x"}), "few_shot: unknown kinds"),
        (lambda r: r.update(principles=[]), "at least one principle"),
        (lambda r: r.update(rules=[]), "unknown keys"),
    ],
)
def test_constitution_errors_name_file_and_entry(tmp_path, edit, message):
    import yaml

    raw = yaml.safe_load(YAML)
    edit(raw)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=message) as e:
        fb.load_constitution(tmp_path / "bad.yaml")
    assert "bad.yaml" in str(e.value)


def test_constitution_file_errors():
    with pytest.raises(FileNotFoundError, match=r"nowhere\.yaml"):
        fb.load_constitution("/nowhere.yaml")


def test_labels_by_hand():
    np.testing.assert_allclose(fb.option_probability(math.log(0.75), math.log(0.25)), 0.75)
    np.testing.assert_allclose(fb.option_probability(-1000.0, -1001.0), 1 / (1 + math.e**-1))
    # P(A) in order (a, b) and in order (b, a), two principles.
    p_first = np.array([[[0.8, 0.4], [0.6, 0.3]]])
    np.testing.assert_allclose(fb.a_better(p_first), [[[0.8, 0.6], [0.6, 0.7]]])
    np.testing.assert_allclose(fb.soft_labels(p_first), [(0.8 + 0.6 + 0.6 + 0.7) / 4])
    # CoT clamps each probability to [0.4, 0.6] before averaging.
    np.testing.assert_allclose(fb.soft_labels(p_first, clamp=(0.4, 0.6)), [0.6])
    clamped = fb.soft_labels(np.array([[[0.05, 0.9]]]), clamp=(0.4, 0.6))
    np.testing.assert_allclose(clamped, [0.4])
    # A judge that always answers A: both orders cancel to 1/2, all position bias.
    always_a = np.array([[[0.9, 0.9]], [[0.7, 0.7]]])
    np.testing.assert_allclose(fb.soft_labels(always_a), [0.5, 0.5])
    stats = fb.agreement(always_a)
    assert stats["order_agreement"] == 0.0 and np.isnan(stats["principle_agreement"])
    np.testing.assert_allclose(stats["position_bias"], 0.3)
    stats = fb.agreement(p_first)
    assert stats["order_agreement"] == 1.0 and stats["principle_agreement"] == 1.0
    np.testing.assert_allclose(stats["position_bias"], 0.025)
    split = np.array([[[0.9, 0.1], [0.2, 0.7]], [[0.9, 0.1], [0.8, 0.2]]])
    assert fb.agreement(split)["principle_agreement"] == 0.5
    rows = fb.preference_rows(["p", "q"], ["a1", "a2"], ["b1", "b2"], np.array([0.7, 0.2]))
    assert rows == [
        {"prompt": "p", "chosen": "a1", "rejected": "b1", "chosen_probability": 0.7},
        {"prompt": "q", "chosen": "b2", "rejected": "a2", "chosen_probability": 0.8},
    ]
    with pytest.raises(ValueError, match="clamp"):
        fb.a_better(p_first, clamp=(0.6, 0.7))


class ScriptedJudge:
    """Answers by the text it reads: P(A) = 0.9 when option A is "good" and B is not, 0.3
    when B is "good" (a position bias towards A), 0.6 otherwise; and a fixed reasoning."""

    def __init__(self):
        self.seen = []

    def option_logprobs(self, texts, options):
        assert options == ("A", "B")
        self.seen.extend(texts)
        out = []
        for t in texts:
            a = t.split("(A) ")[1].split("\n")[0]
            b = t.split("(B) ")[1].split("\n")[0]
            p = 0.9 if a == "good" != b else 0.3 if b == "good" != a else 0.6
            out.append([math.log(p), math.log(1 - p)])
        return np.asarray(out)

    def generate(self, texts, *, max_new_tokens, temperature, key):
        return ["because."] * len(texts), np.ones(len(texts), bool)


def _two_principles():
    names = ("one", "two")
    items = [{"name": n, "critique": n, "revision": n, "comparison": f"Q {n}?"} for n in names]
    return fb.from_dict({"principles": items})


def test_ai_feedback_swaps_orders_and_ensembles_principles(tmp_path):
    judge, c = ScriptedJudge(), _two_principles()
    config = fb.FeedbackConfig(principles_per_pair=2)
    rows, info = fb.ai_feedback(
        judge, c, ["p1", "p2"], ["good", "meh"], ["bad", "good"], config,
        record_path=tmp_path / "f.jsonl",
    )  # fmt: skip
    # Pair 1: order (a, b): P(A) = 0.9; order (b, a): "good" is B, P(A) = 0.3 → a: 0.7.
    # Each principle gives (0.9 + 0.7) / 2 = 0.8. Pair 2 is the mirror image: b wins at 0.8.
    np.testing.assert_allclose(info["p_a"], [0.8, 0.2])
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("good", "bad"), ("good", "meh")]
    np.testing.assert_allclose([r["chosen_probability"] for r in rows], [0.8, 0.8])
    assert info["order_agreement"] == 1.0 and info["principle_agreement"] == 1.0
    np.testing.assert_allclose(info["position_bias"], 0.1)
    assert len(judge.seen) == 8
    assert [sorted(names) for names in info["principles"]] == [["one", "two"]] * 2
    assert {"Q one?" in t for t in judge.seen} == {True, False}  # the principle is in the text
    records = [json.loads(line) for line in (tmp_path / "f.jsonl").read_text().splitlines()]
    assert len(records) == 8 and {r["order"] for r in records} == {0, 1}
    # One order only: the position bias stays in the label.
    _, one = fb.ai_feedback(
        ScriptedJudge(), c, ["p1"], ["good"], ["bad"],
        fb.FeedbackConfig(principles_per_pair=1, both_orders=False),
    )  # fmt: skip
    np.testing.assert_allclose(one["p_a"], [0.9])
    # Chain of thought: the reasoning goes into the prompt, the probabilities are clamped.
    judge = ScriptedJudge()
    _, cot = fb.ai_feedback(
        judge, c, ["p1"], ["good"], ["bad"], fb.FeedbackConfig(principles_per_pair=1, cot=True)
    )
    np.testing.assert_allclose(cot["p_a"], [(0.6 + 0.6) / 2])
    assert all("Let's think step by step: because.\nSo the answer is: (" in t for t in judge.seen)


def test_next_token_logprobs_equal_the_sequence_path():
    config = from_hf_dict(ARCHS["llama"]().to_dict())
    mesh = sharding_lib.make_mesh(sharding_lib.MeshConfig())
    placed = place_model(ModelSource(init=config), head="lm", mesh=mesh)
    rng = np.random.default_rng(0)
    p = rng.integers(3, config.vocab_size, (5, 7)).astype(np.int32)
    pm = np.ones_like(p, bool)
    pm[0, :3] = False  # a left-padded row
    scorer = Scorer(placed, batch_size=8)
    ids = [5, 9]
    both = scorer.next_token_logprobs(p, pm, ids)
    for j, t in enumerate(ids):
        r = np.full((5, 1), t, np.int32)
        np.testing.assert_allclose(
            both[:, j], scorer.logprob(p, pm, r, np.ones_like(r, bool)), rtol=1e-5, atol=1e-5
        )


class ScriptedReviser:
    """Critiques say "fix"; the revision of "bad" is "good", of "loop" never ends."""

    def generate(self, texts, *, max_new_tokens, temperature, key):
        out, ended = [], []
        for t in texts:
            if t.endswith("Critique:"):
                out.append(" fix\n\nHuman: junk")
                ended.append(True)
            else:
                response = t.split("Assistant: ")[1].split("\n")[0]
                out.append({"bad": "good", "good": "good"}.get(response, "still"))
                ended.append(response != "loop")
        return out, np.asarray(ended)


def test_critique_and_revise_keeps_every_text_and_counts_what_it_did_not_use(tmp_path):
    c = fb.from_dict({"principles": [{"name": "n", "critique": "C?", "revision": "R!",
                                      "comparison": "Q?"}], "stop": ["\n\nHuman:"]})  # fmt: skip
    out = fb.critique_and_revise(
        ScriptedReviser(), c, ["p1", "p2", "p3"], ["bad", "loop", "good"],
        fb.RevisionConfig(rounds=2), record_path=tmp_path / "r.jsonl",
    )  # fmt: skip
    assert out["sft_rows"] == [
        {"prompt": "p1", "completion": "good"},
        {"prompt": "p3", "completion": "good"},
    ]
    assert out["pair_rows"] == [{"prompt": "p1", "chosen": "good", "rejected": "bad"}]
    # p2's revisions never reached EOS (2 rounds); the rest were used.
    info = {"prompts": 3, "rounds": 2, "kept_previous": 2, "revised": 2, "unrevised": 2}
    assert out["info"] == {**info, "empty_final": 0, "pairs": 1}
    first = out["records"][0]
    assert first["draft"] == "bad" and first["final"] == "good"
    assert first["rounds"][0] == {"principle": "n", "critique": "fix", "revision": "good",
                                  "used": True}  # fmt: skip
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 3


def test_synthetic_feedback_language_by_hand():
    plain = SyntheticTask(SyntheticTaskConfig())
    task = SyntheticTask(SyntheticTaskConfig(feedback_examples=0.5))
    assert plain.vocab_size == 18 and task.vocab_size == 18 + len(language.WORDS)
    assert all(plain.vocab[w] == task.vocab[w] for w in plain.vocab)  # old ids unchanged
    p = ["sort 3 1 4 ="] * 4
    r = ["1 3 4", "1 3 4 4", "3 1 4", "1 3 5"]
    gold = task.gold_reward(p, r)
    np.testing.assert_allclose(gold, [1.0, 2 * 3 / 4 - 1, 2 * 1 / 3 - 1, 2 * 2.5 / 3 - 1])
    np.testing.assert_allclose(language.utility(task, "correct", p, r), gold)
    np.testing.assert_allclose(language.utility(task, "concise", p, r), gold - [0, 0.5, 0, 0])
    # "3 1 4" echoes the prompt at all three places; the target differs at the first two.
    np.testing.assert_allclose(language.utility(task, "original", p, r), gold - [0, 0, 1.0, 0])
    np.testing.assert_allclose(
        language.utility(task, "better", p, r),
        gold + 0.25 * np.array([3, 4, 3, 3]) + 0.25 * np.array([1, 1, 3, 0]),  # "4" echoes
    )
    # Critiques go symbol by symbol: the response's, the target's, and the verdict.
    ok3 = ["1", "1", "ok", "3", "3", "ok", "4", "4", "ok"]
    assert language.faults(task, "correct", p[0], "1 3 4 4") == [*ok3, "long"]
    assert language.faults(task, "correct", p[0], "3 1") == [
        "3", "1", "wrong", "1", "3", "wrong", "short"]  # fmt: skip
    assert language.faults(task, "original", p[0], "3 1 4") == [
        "3", "1", "wrong", "1", "3", "wrong", "4", "4", "ok", "echo"]  # fmt: skip
    assert language.faults(task, "concise", p[0], "1 3 4") == ok3
    assert language.faults(task, "better", p[0], "1 3 4 4 4") == ok3
    texts = [row["completion"] for row in task.pretraining_corpus(200)]
    judged = [t for t in texts if t.startswith("judge ")]
    critiqued = [t for t in texts if t.startswith("critique ")]
    assert 50 < len(judged) + len(critiqued) < 150 and judged and critiqued
    tok = [len(t.split()) + 2 for t in texts]
    assert max(tok) <= task.max_pretraining_tokens
    assert all(w in task.vocab for t in texts for w in t.split())
    # The plain texts of a seed are the same with or without the feedback language.
    pairs = zip(plain.pretraining_corpus(200), task.pretraining_corpus(200), strict=True)
    same = [a["completion"] == b["completion"] for a, b in pairs]
    assert sum(same) == 200 - len(judged) - len(critiqued)
    c = language.constitution(["correct", "concise"])
    assert c.comparison_prompt("sort 3 1 4 =", "1 3 4", "3 1", c.principles[1]) == (
        "judge concise sort 3 1 4 = A 1 3 4 B 3 1 ?"
    )
    cot = c.comparison_prompt("sort 3 1 4 =", "1 3 4", "3 1", c.principles[0], cot=True)
    assert cot + " A ok B wrong wrong short" + c.cot_answer() == (
        "judge correct sort 3 1 4 = A 1 3 4 B 3 1 ? think A ok B wrong wrong short hence"
    )
    assert c.trim("A ok B wrong hence A") == "A ok B wrong"
    reasoned = [t for t in judged if " think " in t]
    assert reasoned and all(t.split(" hence ")[1] in ("A", "B") for t in reasoned)
