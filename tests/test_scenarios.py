"""The failure-mode scenarios: their presets, a run sharing a base run's SFT, the analysis on
constructed histories (gold peak, monitor timing, threshold sweeps, the table), and (slow) the
five scenarios' claims at the default size."""

import dataclasses
import json

import numpy as np
import pytest
from test_pipeline import ROOT, synthetic_config

from rlhf_jax.synthetic import Pipeline, scenarios


def history(gold, **columns):
    rows = []
    for i, g in enumerate(gold):
        row = {"iteration": i + 1, "objective/gold": float(g)}
        row.update({k: float(v[i]) for k, v in columns.items()})
        rows.append(row)
    return rows


def test_every_scenario_is_a_preset_that_changes_only_the_raters(tmp_path):
    base = synthetic_config(None, tmp_path / "base")
    for name, scenario in scenarios.SCENARIOS.items():
        config = synthetic_config(name, tmp_path / name)
        assert config.base_run_dir == "runs/synthetic"
        assert config.train.grpo.iterations == 0
        for field, value in scenario.raters.items():
            assert getattr(config.task, field) == value != getattr(base.task, field)
        unchanged = dataclasses.replace(config.task, **{
            f: getattr(base.task, f) for f in scenario.raters
        })  # fmt: skip
        assert unchanged == base.task
        assert config.model == base.model and config.train.sft == base.train.sft
    smoke = synthetic_config("smoke,noisy", tmp_path / "s")
    assert smoke.task.random_label_rate == 0.5 and smoke.base_run_dir == "runs/synthetic_smoke"
    with pytest.raises(ValueError, match="unknown variant 'verbose'"):
        synthetic_config("verbose", tmp_path)
    with pytest.raises(ValueError, match="unknown variant"):
        synthetic_config("noisy,clean", tmp_path)


def test_a_run_on_a_base_checks_the_base_and_uses_its_sft(tmp_path):
    base = synthetic_config("smoke", tmp_path / "base")
    Pipeline(base)  # writes pipeline.json; no phase run yet
    config = dataclasses.replace(
        synthetic_config("smoke,verbosity", tmp_path / "v"), base_run_dir=str(tmp_path / "base")
    )
    run = Pipeline(config)
    assert run.artifact("sft") == tmp_path / "base" / "sft" / "artifact"
    assert run.artifact("reward") == tmp_path / "v" / "reward" / "artifact"
    with pytest.raises(ValueError, match="has no finished pretrain phase"):
        run.done("pretrain")
    assert run.done("reward") is False
    other = dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, hidden_size=32),
        task=dataclasses.replace(config.task, demo_corruption=0.1),
    )
    with pytest.raises(ValueError, match="other model, task than this config"):
        Pipeline(other)
    with pytest.raises(ValueError, match=r"holds no pipeline\.json"):
        Pipeline(dataclasses.replace(config, base_run_dir=str(tmp_path / "nothing")))
    with pytest.raises(ValueError, match="this run's own directory"):
        Pipeline(dataclasses.replace(config, base_run_dir=config.run_dir))
    # A base recorded before a field existed: the field takes its default, the base still fits.
    recorded = tmp_path / "base" / "pipeline.json"
    old = json.loads(recorded.read_text())
    del old["model"]["qk_norm"], old["train"]["sft"]["eval_fraction"]
    recorded.write_text(json.dumps(old))
    assert Pipeline(config).artifact("sft") == tmp_path / "base" / "sft" / "artifact"
    recorded.write_text(json.dumps(old | {"retired_field": 1}))
    with pytest.raises(ValueError, match=r"pipeline\.json: not a config this version can read"):
        Pipeline(config)


def test_gold_peak_is_the_top_of_the_centred_average():
    gold = [0, 0, 1, 5, 1, 0, 0, 2, 2, 2, 2, 2]
    it, value = scenarios.gold_peak(history(gold), window=3)
    averaged = scenarios.moving_average(gold, 3)
    np.testing.assert_allclose(averaged[:4], [0, 1 / 3, 2, 7 / 3])
    assert it == 1 + int(np.argmax(averaged)) and value == pytest.approx(averaged.max())
    assert scenarios.gold_peak(history([3.0]), window=10) == (1, 3.0)
    with pytest.raises(ValueError, match="empty"):
        scenarios.gold_peak([])


def test_sweep_times_each_threshold_against_the_peak_and_counts_clean_alarms():
    n = 30
    ramp = np.linspace(0, 1, n)
    histories = {
        # gold peaks at 15 while the proxy–length correlation climbs
        "verbosity": history(-np.abs(np.arange(n) - 14.0), **{"monitor/proxy_length_corr": ramp}),
        # clean: gold rises to the end, correlation stays near 0.3 but touches 0.45 once
        "clean": history(
            np.arange(n), **{"monitor/proxy_length_corr": np.where(np.arange(n) == 7, 0.45, 0.3)}
        ),
    }
    rows = scenarios.sweep(histories, "length_correlation", [0.2, 0.4, 0.5, 2.0])
    by = {r["threshold"]: r for r in rows}
    assert by[0.2]["false_alarms"] == n and by[0.4]["false_alarms"] == 1
    assert by[0.5]["false_alarms"] == 0 and by[2.0]["false_alarms"] == 0
    first = int(np.argmax(ramp > 0.5)) + 1
    assert by[0.5]["first"]["verbosity"] == first
    assert by[0.5]["lead"]["verbosity"] == 15 - first
    assert by[2.0]["first"]["verbosity"] is None and by[2.0]["lead"]["verbosity"] is None
    assert scenarios.quietest_on_clean(rows, +1)["threshold"] == 0.5
    # a monitor that fires below its threshold: the most sensitive quiet one is the highest
    entropy = {
        "clean": history(np.arange(5), **{"monitor/entropy_frac": [1, 0.9, 0.8, 0.85, 0.8]}),
    }
    rows = scenarios.sweep(entropy, "entropy_collapse", [0.9, 0.75, 0.5])
    assert [r["false_alarms"] for r in rows] == [3, 0, 0]
    assert scenarios.quietest_on_clean(rows, -1)["threshold"] == 0.75
    drift = {"clean": history(np.arange(3), **{"monitor/echo_drift": [0.1, -2.0, 0.5]})}
    assert scenarios.sweep(drift, "echo_drift", [1.0])[0]["false_alarms"] == 1  # |x|


def _finished_run(root, *, gold, first_fired):
    (root / "evaluate").mkdir(parents=True)
    (root / "ppo").mkdir()
    policy = {"gold": 0.1, "proxy": -1.0, "kl": 0.0, "length": 5.0, "echo": 0.1}
    summary = {
        "policies": {"sft": policy, "ppo": {**policy, "gold": 0.3, "kl": 1.5, "length": 8.0}},
        "win_rates": {"ppo vs sft": {"rate": 0.7}},
    }
    (root / "evaluate" / "summary.json").write_text(json.dumps(summary))
    (root / "ppo" / "history.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in history(gold))
    )
    monitors = {
        "monitors": {
            m: {"count": 3, "first_iteration": it, "threshold": 0.5}
            for m, it in first_fired.items()
        }
    }
    (root / "ppo" / "monitors.json").write_text(json.dumps(monitors))


def test_scenario_rows_and_table(tmp_path):
    gold = -np.abs(np.arange(30) - 14.0)  # peaks at iteration 15
    _finished_run(
        tmp_path / "v", gold=gold,
        first_fired={"proxy_gold_correlation": 2, "length_drift": 3, "echo_correlation": 8},
    )  # fmt: skip
    row = scenarios.scenario_row("verbosity", scenarios.read_run(tmp_path / "v"))
    peak = scenarios.gold_peak(history(gold))[0]
    assert row["gold_peak"][0] == peak == 15 and row["iterations"] == 30
    # the gold-needing monitor is left out of the first gold-free warning
    assert row["first_warning"] == {"monitor": "length_drift", "first": 3, "count": 3,
                                    "lead": peak - 3}  # fmt: skip
    assert row["length"] == (5.0, 8.0) and row["echo"] == (0.1, 0.1)
    table = scenarios.table_markdown([row])
    assert f"length_drift at 3 ({peak - 3} before the peak)" in table
    assert "echo_correlation ×3" in table and "proxy_gold_correlation at 2 ×3" in table
    assert "| 0.100 → 0.300 |" in table and "5.00 → 8.00" in table
    with pytest.raises(ValueError, match="not a finished pipeline run"):
        scenarios.read_run(tmp_path / "missing")


def test_replay_fires_the_gold_free_monitors_from_the_logged_statistics():
    from rlhf_jax.evaluation import MonitorConfig

    rows = history(
        np.zeros(6),
        **{
            "monitor/proxy_length_corr": [0.1, 0.35, 0.2, 0.5, 0.6, 0.1],
            "monitor/length_drift": [0, -0.3, 0, 0, 0, 0],
            "monitor/entropy_frac": [1, 0.9, 0.2, 0.1, 1, 1],
            "monitor/kl": [0, 1, 2, 3, 30, float("nan")],
        },
    )
    fired = scenarios.replay(rows, MonitorConfig(max_length_corr=0.3))
    assert fired == {
        "length_correlation": {"first": 2, "count": 3},
        "length_drift": {"first": 2, "count": 1},  # |drift| > 0.2
        "entropy_collapse": {"first": 3, "count": 2},  # below 0.25
        "kl_blowup": {"first": 5, "count": 1},  # NaN skipped (the run itself warns on it)
    }
    assert set(scenarios.THRESHOLD_FIELDS) == set(scenarios.GOLD_FREE)


@pytest.mark.slow  # ~30 min on 2 cores: the default pretrain/SFT, then five pipelines
def test_scenarios_show_their_flaws_against_gold(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "report"
    subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "scenarios.py"), f"--out={out}",
         f"--base_run_dir={tmp_path / 'base'}"],
        check=True, cwd=tmp_path,
    )  # fmt: skip
    rows = {r["scenario"]: r for r in json.loads((out / "report.json").read_text())["rows"]}
    clean, verbose, syco = rows["clean"], rows["verbosity"], rows["sycophancy"]
    assert clean["gold"][1] > clean["gold"][0]  # clean raters: PPO improves gold
    # verbosity: the policy lengthens its answers and loses gold; clean does not lengthen
    assert verbose["length"][1] > 1.2 * verbose["length"][0]
    assert verbose["gold"][1] < clean["gold"][1]
    assert clean["length"][1] < 1.2 * clean["length"][0]
    # sycophancy: the policy echoes the prompt more than SFT and clean's do (measured 0.30 ->
    # 0.39 against clean's 0.35)
    assert syco["echo"][1] > syco["echo"][0] + 0.05 and syco["echo"][1] > clean["echo"][1]
    assert syco["gold"][1] < clean["gold"][1]
    # the gold-free monitors: quiet on clean (the defaults sit above its maxima), the length
    # monitors fire on verbosity
    assert clean["first_warning"] is None
    assert {"length_correlation", "length_drift"} <= set(verbose["warnings"])
