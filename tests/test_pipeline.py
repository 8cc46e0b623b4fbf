"""The synthetic-task pipeline: a smoke run end to end, resume at the first unfinished phase,
and (slow) the full default run's claim that PPO beats SFT by the gold reward."""

import importlib.util
import json
import pathlib

import pytest

from rlhf_jax.synthetic import Pipeline, PipelineConfig
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


@pytest.mark.slow  # ~4-6 min on 2 cores, nearly all of it compiling the phases' programs
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
    assert set(result["results"]) == {"ppo", "grpo", "dpo", "evaluate"}
    summary = json.loads((tmp_path / "evaluate" / "summary.json").read_text())
    assert set(summary["policies"]) == {"sft", "ppo", "dpo", "grpo"}
    assert "grpo vs ppo" in summary["win_rates"]
    assert summary["policies"]["sft"]["kl"] == 0.0
    assert "ppo vs sft" in summary["win_rates"]
    report = (tmp_path / "evaluate" / "report.md").read_text()
    assert "Win rate" in report
    pngs = list((tmp_path / "evaluate").glob("*.png"))
    assert len(pngs) >= 3 and all(p.stat().st_size > 1000 for p in pngs)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """The default `make demo` run (several minutes on 2 CPU cores)."""
    run_dir = tmp_path_factory.mktemp("default_pipeline")
    result = Pipeline(synthetic_config(None, run_dir)).run()
    assert result["status"] == "finished"
    return json.loads((run_dir / "evaluate" / "summary.json").read_text())


@pytest.mark.slow
def test_default_pipeline_ppo_improves_gold_over_sft_with_bounded_kl(default_run):
    ppo, sft = default_run["policies"]["ppo"], default_run["policies"]["sft"]
    win = default_run["win_rates"]["ppo vs sft"]
    assert ppo["gold"] > sft["gold"]
    assert win["ci_low"] > 0.5, win  # better than SFT on held-out prompts, by the gold judge
    assert 0.0 < ppo["kl"] < 5.0


@pytest.mark.slow
def test_default_pipeline_ppo_beats_sft_on_three_quarters_of_prompts(default_run):
    assert default_run["win_rates"]["ppo vs sft"]["rate"] >= 0.75


@pytest.mark.slow
def test_default_pipeline_grpo_on_the_gold_reward_wins_nine_in_ten(default_run):
    # GRPO against the verifiable gold reward alone (no reward model), in less time than PPO.
    assert default_run["win_rates"]["grpo vs sft"]["rate"] >= 0.9
