"""The metric writer's console, JSONL and optional Weights & Biases output."""

import json
import sys
import types

import pytest

from rlhf_jax.logging import MetricWriter


def test_console_prints_as_written_and_the_bar_keeps_its_metrics(tmp_path, capsys):
    writer = MetricWriter(tmp_path, total_steps=4, description="sft", tensorboard=False)
    writer.print("[sft] data x.jsonl: [8, 12] buckets")  # rich markup would swallow "[sft]"
    writer.write(2, {"loss": 0.5, "steps_per_second": 2.0})
    writer.write(2, {"eval/loss": 0.7})  # a held-out evaluation: no loss, no rate
    writer.close()
    out = capsys.readouterr().out
    assert "[sft] data x.jsonl: [8, 12] buckets" in out
    final = [line for line in out.splitlines() if "2/4" in line][-1]
    assert "loss 0.5" in final and "2.00 it/s" in final
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [set(r) - {"step", "time"} for r in rows] == [
        {"loss", "steps_per_second"},
        {"eval/loss"},
    ]


def test_the_bar_says_compiling_until_the_first_log_and_is_not_cut_off_a_terminal(capsys):
    writer = MetricWriter(None, total_steps=9, description="ppo", show=("objective/scores",))
    writer.close()
    assert "compiling" in capsys.readouterr().out
    writer = MetricWriter(None, total_steps=9, description="ppo",
                          show=("objective/scores", "objective/kl", "objective/gold"))  # fmt: skip
    writer.write(1, {"objective/scores": 1.25, "objective/kl": 0.125, "objective/gold": -3.5,
                     "steps_per_second": 0.5})  # fmt: skip
    writer.close()
    line = [ln for ln in capsys.readouterr().out.splitlines() if "1/9" in ln][-1]
    assert line.rstrip().endswith("scores 1.25  kl 0.125  gold -3.5"), line


def test_wandb_is_optional_and_logs_beside_the_jsonl(tmp_path, monkeypatch):
    calls = []

    class Run:
        def define_metric(self, name, **kw):
            calls.append(("define_metric", name, kw))

        def log(self, values):
            calls.append(("log", values))

        def finish(self):
            calls.append(("finish",))

    fake = types.SimpleNamespace(
        init=lambda **kw: calls.append(("init", kw)) or Run(),
        util=types.SimpleNamespace(generate_id=lambda: "abc123"),
    )
    monkeypatch.setitem(sys.modules, "wandb", fake)
    for _ in range(2):  # a resumed run continues the same W&B run
        writer = MetricWriter(tmp_path / "logs", total_steps=2, console=False, tensorboard=False,
                              wandb_project="proj", run_config={"lr": 1.0})  # fmt: skip
        writer.write(1, {"loss": 0.25, "bad": float("nan")})
        writer.close()
    inits = [c[1] for c in calls if c[0] == "init"]
    assert [i["id"] for i in inits] == ["abc123", "abc123"] and inits[0]["project"] == "proj"
    assert inits[0]["config"] == {"lr": 1.0} and inits[0]["resume"] == "allow"
    assert ("log", {"step": 1, "loss": 0.25}) in calls and calls[-1] == ("finish",)
    assert ("define_metric", "*", {"step_metric": "step"}) in calls  # re-logged steps kept
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    with pytest.raises(ImportError, match="pip install wandb"):
        MetricWriter(tmp_path / "x", total_steps=1, console=False, wandb_project="proj")
