"""The report of run directories: curves from what a run logged, however it ended."""

import json

from rlhf_jax.evaluation.runs import write_run_report


def _write(path, rows, tail=""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)


def test_a_live_or_resumed_run_reports_its_final_trajectory(tmp_path):
    run = tmp_path / "sft"
    # Steps 1-6 logged, a crash, a resume from the checkpoint at step 4, steps 5-8 again,
    # and a line being written as the report reads the file.
    rows = [{"step": s, "loss": 10.0 - s} for s in range(1, 7)]
    rows += [{"step": s, "loss": 100.0 + s} for s in range(5, 9)]
    rows += [{"step": 8, "eval/loss": 3.0}]
    _write(run / "logs" / "metrics.jsonl", rows, tail='{"step": 9, "lo')
    md = write_run_report([run], tmp_path / "report").read_text()
    assert "Not finished: no artifact yet." in md
    # loss: steps 1-4 of the first attempt, then 5-8 of the resumed one: 8 points.
    assert "| loss | 9 | 108 | 8 |" in md and "| eval/loss | 3 | 3 | 1 |" in md
    assert (tmp_path / "report" / "sft_curves.png").stat().st_size > 1000


def test_an_rl_run_gets_its_rl_report_and_an_empty_run_says_so(tmp_path):
    rl = tmp_path / "ppo"
    history = [{"iteration": i, "objective/kl": 0.1 * i, "objective/scores": 0.5 * i,
                "objective/raw_scores": 1.0 + i} for i in range(1, 6)]  # fmt: skip
    _write(rl / "history.jsonl", history)
    (tmp_path / "empty").mkdir()
    md = write_run_report([rl, tmp_path / "empty"], tmp_path / "report").read_text()
    assert "## ppo (ppo)" in md and "[ppo/report.md](ppo/report.md)" in md
    assert "Nothing logged yet" in md
    assert "raw score" in (tmp_path / "report" / "ppo" / "report.md").read_text()


def test_an_rl_runs_monitors_reach_its_report(tmp_path):
    from rlhf_jax.evaluation import HackingMonitor

    rl = tmp_path / "ppo"
    _write(rl / "history.jsonl", [{"iteration": 1, "objective/kl": 0.1}])
    monitor = HackingMonitor()
    monitor.update(1, {"proxy_scores_B": [1.0, 2.0, 3.0], "features": {"echo": [0.1, 0.5, 0.9]}})
    (rl / "monitors.json").write_text(json.dumps(monitor.summary()))
    write_run_report([rl], tmp_path / "report")
    sub = (tmp_path / "report" / "ppo" / "report.md").read_text()
    assert "echo_correlation" in sub and "The monitors did not run." not in sub
