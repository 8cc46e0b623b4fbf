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
    assert all(a.base_run_dir == "r/ai" for k, a in arms.items() if k != "ai")
