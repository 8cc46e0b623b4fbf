"""The synthetic-task pipeline: a smoke run end to end, resume at the first unfinished phase,
and (slow) the full default run's claim that PPO beats SFT by the gold reward."""

import importlib.util
import json
import pathlib

import pytest

from rlhf_jax.pipeline import Pipeline, PipelineConfig
from rlhf_jax.training.config import build

ROOT = pathlib.Path(__file__).resolve().parents[1]


def synthetic_config(arg, run_dir, **overrides):
    spec = importlib.util.spec_from_file_location(
        "synthetic_config", ROOT / "configs" / "synthetic.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(arg)
    c.run_dir = str(run_dir)
    c.console = False
    for key, value in overrides.items():
        target = c
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return build(PipelineConfig, c.to_dict())


def test_smoke_pipeline_runs_resumes_and_reports(tmp_path):
    config = synthetic_config("smoke", tmp_path)
    first = Pipeline(config).run(stop_after_phase="reward")
    assert first["status"] == "stopped"
    for phase in ("pretrain", "sft", "reward"):
        assert (tmp_path / phase / "artifact" / "artifact.json").exists(), phase
    assert not (tmp_path / "ppo").exists()
    prefs = json.loads((tmp_path / "preferences" / "summary.json").read_text())
    assert (
        prefs["pairs"] > 0 and sum(prefs["dropped"].values()) + prefs["pairs"] == prefs["prompts"]
    )

    second = Pipeline(config)
    result = second.run()
    assert result["status"] == "finished"
    # The rerun started at PPO: the finished phases were skipped, not retrained.
    assert set(result["results"]) == {"ppo", "dpo", "evaluate"}
    summary = json.loads((tmp_path / "evaluate" / "summary.json").read_text())
    assert set(summary["policies"]) == {"sft", "ppo", "dpo"}
    assert summary["policies"]["sft"]["kl"] == 0.0
    assert "ppo vs sft" in summary["win_rates"]
    report = (tmp_path / "evaluate" / "report.md").read_text()
    assert "Win rate" in report
    pngs = list((tmp_path / "evaluate").glob("*.png"))
    assert len(pngs) >= 3 and all(p.stat().st_size > 1000 for p in pngs)


@pytest.mark.slow
def test_default_pipeline_ppo_beats_sft_by_gold(tmp_path):
    config = synthetic_config(None, tmp_path)
    result = Pipeline(config).run()
    assert result["status"] == "finished"
    summary = json.loads((tmp_path / "evaluate" / "summary.json").read_text())
    win = summary["win_rates"]["ppo vs sft"]
    assert win["rate"] >= 0.75, win
    assert summary["policies"]["ppo"]["gold"] > summary["policies"]["sft"]["gold"]
    assert summary["policies"]["ppo"]["kl"] < 10.0
