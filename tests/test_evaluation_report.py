"""The report writes a markdown summary, non-empty PNGs and a JSON copy of its data."""

import json
import math

import numpy as np
import pytest

from rlhf_jax.evaluation import (
    FrontierPoint,
    HackingMonitor,
    HistoryKeys,
    best_of_n_curve,
    compare_scores,
    plot_win_rates,
    win_rate,
    write_report,
)
from rlhf_jax.evaluation.plots import ema

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
K = HistoryKeys()


def fake_history(iterations=20, hack_after=12):
    rows = []
    for t in range(iterations):
        gold = 0.1 * t if t < hack_after else 0.1 * hack_after - 0.05 * (t - hack_after)
        rows.append(
            {
                "iteration": t,
                K.kl: 0.4 * t,
                K.proxy: 0.15 * t,
                K.gold: gold,
                K.length: 20 + (0 if t < hack_after else 2 * (t - hack_after)),
                K.entropy: 2.0 - 0.02 * t,
            }
        )
    return rows


def inputs():
    rng = np.random.default_rng(0)
    monitor = HackingMonitor()
    for t in range(10):
        monitor.update(t, {"kl": 3.0 * t})  # blows up past 20 nats
    proxy, gold = rng.normal(size=(16, 8)), rng.normal(size=(16, 8))
    prompts = [f"prompt {i} | with a pipe" for i in range(40)]
    before = rng.normal(size=40)
    return dict(
        runs={"ppo": fake_history(), "ppo (kl 0.2)": fake_history(15, 20)},
        extra_points=[
            FrontierPoint(0.0, 0.0, 0.0, "SFT", None, "reference"),
            FrontierPoint(2.5, 0.9, math.nan, "DPO"),
        ],
        best_of_n=best_of_n_curve(proxy, gold, ns=[1, 2, 4, 8]),
        win_rates={
            "PPO vs SFT (gold)": win_rate(rng.normal(0.5, 1, 64), rng.normal(0, 1, 64)),
            "DPO vs SFT (gold)": win_rate(rng.normal(0.2, 1, 64), rng.normal(0, 1, 64)),
        },
        monitors=monitor.summary(),
        red_team=compare_scores(prompts, before, before - 0.5 * rng.random(40), tolerance=0.1),
        notes={"config": "configs/synthetic.py", "wall time (s)": 123.4},
    )


def test_full_report(tmp_path):
    report = write_report(tmp_path / "run", **inputs())
    assert set(report.plots) == {"win_rate", "reward_vs_kl", "proxy_gold", "length"}
    for path in report.plots.values():
        assert path.parent == tmp_path / "run"
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
    md = report.markdown.read_text()
    for section in (
        "# RLHF run report",
        "## Summary",
        "## Win rate",
        "## Gold reward vs KL",
        "Best-of-n",
        "## Proxy vs gold reward over training",
        "## Response length over training",
        "## Reward-hacking monitors",
        "## Red team",
    ):
        assert section in md
    for path in report.plots.values():
        assert f"]({path.name})" in md
    assert "| kl_blowup | 3 | 7 | 9 | 20 |" in md
    assert "PPO vs SFT (gold)" in md and "Wilson" in md
    assert "prompt 0 \\| with a pipe" in md  # table cells escape pipes
    data = json.loads(report.json.read_text())
    assert data["red_team"]["regressions"] == [
        {**r, "delta": r["after"] - r["before"]} for r in data["red_team"]["regressions"]
    ]
    assert data["win_rates"]["PPO vs SFT (gold)"]["n"] == 64
    assert data["extra_points"][1]["proxy"] is None  # NaN becomes null


def test_long_tables_say_what_they_leave_out(tmp_path):
    prompts = [f"p{i}" for i in range(50)]
    rt = compare_scores(prompts, np.ones(50), np.zeros(50))
    report = write_report(tmp_path, red_team=rt)
    md = report.markdown.read_text()
    assert "50 of 50 prompts regressed" in md
    assert "… and 20 more regressions; all are in report.json." in md
    assert len(json.loads(report.json.read_text())["red_team"]["regressions"]) == 50


def test_empty_report_says_what_is_missing(tmp_path):
    report = write_report(tmp_path)
    assert report.plots == {}
    md = report.markdown.read_text()
    assert "No training history was given." in md
    assert "The monitors did not run." in md
    assert "No red-team pass was run." in md


def test_proxy_only_history_plots_proxy_vs_kl(tmp_path):
    history = [{K.kl: float(t), K.proxy: 0.1 * t} for t in range(5)]
    report = write_report(tmp_path, runs={"ppo": history})
    assert "## Proxy reward vs KL" in report.markdown.read_text()
    assert report.plots["reward_vs_kl"].stat().st_size > 0
    assert "length" not in report.plots


def test_plot_functions_reject_empty_input(tmp_path):
    with pytest.raises(ValueError, match="win_rates is empty"):
        plot_win_rates(tmp_path / "w.png", {})


def test_the_report_says_what_proxy_and_gold_are_and_reads_raw_scores_where_logged(tmp_path):
    # PPO logs its normalised training score and the reward model's raw one; evaluations of
    # the reward model are raw, so the report shows raw scores where every run has them.
    history = [
        {K.kl: 0.1 * t, K.proxy: 1.0 + t, "objective/raw_scores": 10.0 + t} for t in range(4)
    ]
    md = write_report(tmp_path, runs={"ppo": history}).markdown.read_text()
    assert "**proxy**: the reward model's raw score" in md and "**gold**: the true reward" in md
    assert "`objective/raw_scores`" in md and "| ppo | 4 | 0.3 | 13 |" in md
    md = write_report(tmp_path / "b", runs={"ppo": [{K.kl: 0.1, K.proxy: 2.0}]}).markdown
    assert "| ppo | 1 | 0.1 | 2 |" in md.read_text()  # no raw score logged: the one there is


def test_moving_average_closed_form():
    np.testing.assert_allclose(ema([3.0, 3.0, 3.0], span=5), [3.0, 3.0, 3.0])
    # alpha = 0.5: (0.5, w 0.5) -> 1; (0.25, w 0.75) -> 1/3; (0.625, w 0.875) -> 5/7
    np.testing.assert_allclose(ema([1.0, 0.0, 1.0], span=3), [1.0, 1 / 3, 5 / 7], rtol=1e-15)
