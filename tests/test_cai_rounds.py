"""Constitutional AI and iterated RLHF in the synthetic pipeline (smoke sizes): SL-CAI keeps
every text and trains on revisions, RL-CAI labels pairs with soft labels and no rater, a second
round samples from the round-1 policy, trains on all labels, continues PPO and resumes
mid-round."""

import importlib.util
import json
import shutil

import pytest
from test_pipeline import ROOT, synthetic_config

from rlhf_jax import interrupts
from rlhf_jax.synthetic import Pipeline, PipelineConfig
from rlhf_jax.synthetic import rounds as rounds_lib
from rlhf_jax.training.config import build


def _small(tmp_path, **overrides):
    return synthetic_config(
        "smoke,cai",
        tmp_path,
        **{
            "preferences.prompts": 96,
            "train.pretrain.steps": 200,  # enough for some revisions to end
            "feedback.revise_prompts": 32,
            "train.ppo.iterations": 2,
            "train.ppo.prompts": 64,
            "iteration.rounds": 2,
            "iteration.prompts": 48,
            "iteration.probe_prompts": 16,
            "iteration.stats_prompts": 32,
            "iteration.reward_steps": 4,
            **overrides,
        },
    )


def test_cai_and_two_rounds_smoke(tmp_path):
    config = _small(tmp_path)
    result = Pipeline(config).run(stop_after_phase="rounds")
    assert result["status"] == "stopped"
    # SL-CAI: every draft, critique and revision is kept; SFT ran on the revisions.
    records = [json.loads(x) for x in (tmp_path / "sl_cai" / "records.jsonl").open()]
    assert records and all({"draft", "final", "rounds"} <= set(r) for r in records)
    assert all(
        set(r["rounds"][0]) == {"principle", "critique", "revision", "used"} for r in records
    )
    sl = json.loads((tmp_path / "sl_cai" / "summary.json").read_text())
    assert sl["prompts"] == len(records) and {"gold_drafts", "gold_revisions"} <= set(sl)
    assert (tmp_path / "sl_cai" / "artifact" / "artifact.json").exists()
    # RL-CAI: soft labels from the feedback model, every judge prompt recorded.
    prefs = json.loads((tmp_path / "preferences" / "summary.json").read_text())
    assert prefs["labels"] == "ai" and prefs["pairs"] > 0
    rows = [json.loads(x) for x in (tmp_path / "data" / "preferences.jsonl").open()]
    assert all(0.5 <= r["chosen_probability"] <= 1.0 for r in rows)
    judged = [json.loads(x) for x in (tmp_path / "preferences" / "feedback.jsonl").open()]
    assert len(judged) == 2 * 2 * len(rows)  # two principles, both orders
    assert all(j["prompt"].startswith("judge ") for j in judged)
    # Round 2: new pairs from round 1's policy, the reward model on all labels, PPO on.
    summary = json.loads((tmp_path / "rounds" / "summary.json").read_text())
    table = summary["rounds"]
    assert [r["round"] for r in table] == [1, 2]
    r2 = json.loads((tmp_path / "rounds" / "round_2" / "preferences" / "summary.json").read_text())
    assert table[1]["labels"] == table[0]["labels"] + r2["pairs"]
    assert (tmp_path / "rounds" / "round_2" / "ppo" / "artifact" / "artifact.json").exists()
    # Its KL reference stayed the SFT policy: round 2 starts away from it.
    history = (tmp_path / "rounds" / "round_2" / "ppo" / "history.jsonl").read_text()
    assert json.loads(history.splitlines()[0])["objective/kl"] != 0.0
    assert (tmp_path / "rounds" / "rounds.png").stat().st_size > 1000
    assert "| round |" in (tmp_path / "rounds" / "report.md").read_text()
    # Resume mid-round: with round 2's PPO gone, a rerun redoes only it and what follows.
    reward_meta = tmp_path / "rounds" / "round_2" / "reward" / "artifact" / "artifact.json"
    before = reward_meta.stat().st_mtime_ns
    for path in ("ppo", "stats.json", "probe.json"):
        target = tmp_path / "rounds" / "round_2" / path
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()
    (tmp_path / "rounds" / "DONE").unlink()
    again = Pipeline(config).run(stop_after_phase="rounds")
    assert set(again["results"]) == {"rounds"}
    assert reward_meta.stat().st_mtime_ns == before  # not retrained
    assert (
        json.loads((tmp_path / "rounds" / "summary.json").read_text())["rounds"][1]["labels"]
        == table[1]["labels"]
    )


def test_cai_variants_and_arms_build(tmp_path, monkeypatch):
    # The script installs process-wide signal handlers at import; a test must not.
    monkeypatch.setattr(interrupts, "install", lambda: {})
    ai = synthetic_config("cai", tmp_path / "ai")
    assert ai.feedback.labels == "ai" and ai.task.feedback_examples > 0 and ai.feedback.ai.cot
    raters = synthetic_config("cai_raters,verbosity", tmp_path / "r")
    assert raters.feedback.labels == "raters" and raters.task.length_bias == 0.5
    assert raters.base_run_dir.endswith("cai/ai") and raters.task.feedback_examples > 0
    with pytest.raises(ValueError, match="unknown variant"):
        synthetic_config("cai,verbosity", tmp_path / "x")
    spec = importlib.util.spec_from_file_location("cai_exp", ROOT / "experiments" / "cai.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    arms = {k: build(PipelineConfig, v.to_dict()) for k, v in module.arms(True, "r").items()}
    assert arms["iterated"].iteration.rounds == 3
    total = arms["iterated"].preferences.prompts + 2 * arms["iterated"].iteration.prompts
    assert total == arms["one_round"].preferences.prompts  # as many prompts labelled in all
    weak = ("one_round_weak", "iterated_weak_sft")
    assert all(a.base_run_dir == "r/ai" for k, a in arms.items() if k not in ("ai", *weak))
    assert arms["one_round_weak"].base_run_dir is None
    assert arms["iterated_weak_sft"].base_run_dir == "r/one_round_weak"
    assert arms["one_round_weak"].train.sft.steps < arms["raters"].train.sft.steps
    few, one = arms["iterated_few"], arms["one_round_few"]
    assert few.iteration.rounds == 3 and one.iteration.rounds == 1
    assert few.preferences.prompts + 2 * few.iteration.prompts == one.preferences.prompts
    assert 3 * few.train.ppo.iterations == one.train.ppo.iterations
    assert few.iteration.reward_steps == few.train.reward.steps == one.train.reward.steps


def _history(path, kl, gold):
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"iteration": i, "objective/kl": k, "objective/gold": g}
            for i, (k, g) in enumerate(zip(kl, gold, strict=True))]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_trajectory_and_matched_kl(tmp_path):
    it, one = tmp_path / "iterated", tmp_path / "one"
    _history(it / "ppo" / "history.jsonl", [0.0, 1.0], [0.0, 0.5])
    _history(it / "rounds" / "round_2" / "ppo" / "history.jsonl", [1.0, 2.0], [0.6, 0.8])
    _history(it / "rounds" / "round_10" / "ppo" / "history.jsonl", [2.0, 3.0], [0.9, 1.0])
    (it / "rounds" / "summary.json").write_text(json.dumps({"reference": "sft"}))
    _history(one / "ppo" / "history.jsonl", [0.0, 1.0, 2.0, 3.0, 4.0], [0.0, 0.6, 0.4, 0.2, 0.0])
    rows = rounds_lib.trajectory(it)
    assert [r["round"] for r in rows] == [1, 1, 2, 2, 10, 10]  # by number, not by name
    assert [r["iteration"] for r in rows] == list(range(6))
    out = rounds_lib.matched_kl(it, one, window=2)
    # Trailing means of 2: iterated ends at KL 2.5, gold 0.95; the one-round run's means are KL
    # (0.5, 1.5, 2.5, 3.5), gold (0.3, 0.5, 0.3, 0.1): within KL 2.5 its best is its peak, 0.5.
    assert out["kl"] == pytest.approx(2.5) and out["iterated"]["gold"] == pytest.approx(0.95)
    assert out["one_round_gold_at_kl"] == pytest.approx(0.5)
    # Unsmoothed: the iterated run ends at KL 3.0; within it the one-round best is 0.6 (KL 1).
    assert rounds_lib.matched_kl(it, one, window=1)["one_round_gold_at_kl"] == 0.6
    assert out["one_round"]["peak_gold"] == pytest.approx(0.5)
    assert out["one_round"]["kl_at_peak"] == pytest.approx(1.5)
    assert out["one_round"]["gold"] == pytest.approx(0.1) and out["one_round"]["iterations"] == 5
    (it / "rounds" / "summary.json").write_text(json.dumps({"reference": "previous"}))
    with pytest.raises(ValueError, match="reference is not SFT"):
        rounds_lib.matched_kl(it, one)
    with pytest.raises(ValueError, match="no PPO history"):
        rounds_lib.trajectory(tmp_path / "missing")
    (it / "rounds" / "summary.json").unlink()
    with pytest.raises(ValueError, match="no finished rounds"):
        rounds_lib.matched_kl(it, one)
    # Rounds of new policies from SFT: the iterated run's final point and peak are its last
    # round's (round 10: KL 2, 3; gold 0.9, 1.0), not means across a round's restart.
    (it / "rounds" / "summary.json").write_text(json.dumps({"reference": "sft", "start": "sft"}))
    out = rounds_lib.matched_kl(it, one, window=10)
    assert out["iterated"]["iterations"] == 2 and out["iterated"]["kl"] == pytest.approx(2.5)
    assert out["iterated"]["peak_gold"] == pytest.approx(0.95)
    # The one-round run in its one whole window of 5: KL 2.0, gold 0.24, within KL 2.5.
    assert out["one_round"]["gold"] == pytest.approx(0.24)
    assert out["one_round_gold_at_kl"] == pytest.approx(0.24)


def test_iteration_config_errors_name_the_field():
    from rlhf_jax.synthetic.pipeline_config import IterationConfig

    for kwargs, match in (
        ({"rounds": 0}, "iteration.rounds=0"),
        ({"reference": "base"}, "iteration.reference='base'"),
        ({"start": "pretrain"}, "iteration.start='pretrain'"),
        ({"start": "sft", "reference": "previous"}, "set iteration.reference='sft'"),
        ({"rl_prompts": "all"}, "iteration.rl_prompts='all'"),
        ({"temperature": -1.0}, "iteration.temperature=-1.0"),
    ):
        with pytest.raises(ValueError, match=match):
            IterationConfig(**kwargs)


def test_rounds_from_sft_on_train_prompts(tmp_path):
    """``start="sft"``: each later round trains a new policy from SFT (KL 0 at its start),
    on round 1's PPO prompts plus the last round's regressions (``rl_prompts="train"``); its
    pairs are sampled at ``iteration.temperature``."""
    config = synthetic_config("smoke", tmp_path, **{
        "preferences.prompts": 64, "train.ppo.iterations": 2, "train.ppo.prompts": 64,
        "train.grpo.iterations": 0, "iteration.rounds": 2, "iteration.prompts": 32,
        "iteration.probe_prompts": 16, "iteration.stats_prompts": 32,
        "iteration.reward_steps": 4, "iteration.start": "sft", "iteration.rl_prompts": "train",
        "iteration.temperature": 1.5,
    })  # fmt: skip
    pipeline = Pipeline(config)
    assert pipeline.run(stop_after_phase="rounds")["status"] == "stopped"
    d = tmp_path / "rounds" / "round_2"
    history = [json.loads(x) for x in (d / "ppo" / "history.jsonl").read_text().splitlines()]
    assert history[0]["objective/kl"] == 0.0  # a new policy, at its reference
    regressions = json.loads((tmp_path / "rounds" / "round_1" / "probe.json").read_text())
    rl = [json.loads(x)["prompt"] for x in (d / "ppo_prompts.jsonl").read_text().splitlines()]
    train = pipeline.task.prompts(64, split="train")
    assert rl == train + [p for p in regressions["regressions"] if p not in set(train)]
    summary = json.loads((tmp_path / "rounds" / "summary.json").read_text())
    assert summary["start"] == "sft" and summary["rl_prompts"] == "train"
    assert json.loads((d / "preferences" / "summary.json").read_text())["temperature"] == 1.5
    assert json.loads((tmp_path / "preferences" / "summary.json").read_text())["temperature"] == 1
    assert len(rounds_lib.trajectory(tmp_path)) == 4  # two rounds of two iterations
