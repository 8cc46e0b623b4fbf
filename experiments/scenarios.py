"""The failure-mode scenarios, all five, and their table: does PPO learn the raters' flaw, and
do the gold-free monitors warn before the gold reward peaks?

    python experiments/scenarios.py              # the default sizes (README: the table)
    python experiments/scenarios.py --smoke      # seconds per scenario, for tests

Runs the default pipeline's pretrain and SFT once (`configs/synthetic.py`, its run directory),
then each scenario (`configs/synthetic.py:<scenario>`) on that SFT policy, then writes
runs/scenarios/report.md and report.json: the scenario table, and each gold-free monitor's
statistic replayed against a range of thresholds (first firing against the gold peak on every
scenario; false alarms on clean). Rerunning resumes: finished phases are skipped.
"""

from rlhf_jax import interrupts

interrupts.install()

import dataclasses
import json
import pathlib

from absl import app, flags
from absl import logging as absl_logging

from rlhf_jax.synthetic import Pipeline, PipelineConfig, scenarios
from rlhf_jax.training.config import build, load_get_config

_SMOKE = flags.DEFINE_bool("smoke", False, "The smoke-sized pipeline.")
_ONLY = flags.DEFINE_list("scenarios", list(scenarios.SCENARIOS), "Scenarios to run.")
_OUT = flags.DEFINE_string("out", None, "Report directory (default: the scenarios' parent).")
_BASE_DIR = flags.DEFINE_string("base_run_dir", None, "Where the shared pretrain/SFT go.")

THRESHOLDS = {
    "length_correlation": (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
    "echo_correlation": (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
    "length_drift": (0.05, 0.1, 0.15, 0.2, 0.3, 0.5),
    "echo_drift": (0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 1.0),
    "kl_blowup": (2.0, 3.0, 5.0, 10.0, 20.0),
    "kl_growth": (0.05, 0.1, 0.2, 0.3, 0.4, 0.6),
    "entropy_collapse": (0.9, 0.8, 0.7, 0.6, 0.5, 0.25),
}


def _configs():
    return load_get_config(
        pathlib.Path(__file__).resolve().parent.parent / "configs" / "synthetic.py"
    )


def _sweep_markdown(histories) -> tuple[str, dict]:
    lines, chosen = [], {}
    names = list(histories)
    for monitor, thresholds in THRESHOLDS.items():
        rows = scenarios.sweep(histories, monitor, thresholds)
        key, sign = scenarios.GOLD_FREE[monitor]
        pick = scenarios.quietest_on_clean(rows, sign)
        chosen[monitor] = {"rows": rows, "quietest_on_clean": pick and pick["threshold"]}
        lines.append(f"\n### {monitor} (`{key}`)\n")
        lines.append("| threshold | clean false alarms | " + " | ".join(names) + " |")
        lines.append("|---|---|" + "---|" * len(names))
        for r in rows:
            cells = [
                "—" if r["first"][n] is None else f"{r['first'][n]} ({r['lead'][n]:+d})"
                for n in names
            ]
            lines.append(
                f"| {r['threshold']:g} | {r['false_alarms']} | " + " | ".join(cells) + " |"
            )
        lines.append(
            f"\nMost sensitive threshold with no false alarm on clean: "
            f"{'none' if pick is None else pick['threshold']}"
        )
    return "\n".join(lines), chosen


def main(argv):
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)
    get_config = _configs()
    smoke = ",smoke" if _SMOKE.value else ""
    unknown = sorted(set(_ONLY.value) - set(scenarios.SCENARIOS))
    if unknown:
        raise app.UsageError(
            f"--scenarios: unknown {unknown}; expected {list(scenarios.SCENARIOS)}"
        )
    base = build(PipelineConfig, get_config(smoke.strip(",")).to_dict())
    if _BASE_DIR.value:
        base = dataclasses.replace(base, run_dir=_BASE_DIR.value)
    Pipeline(base).run(stop_after_phase="sft")
    rows, histories, out = [], {}, None
    for name in _ONLY.value:
        config = build(PipelineConfig, get_config(name + smoke).to_dict())
        config = dataclasses.replace(config, base_run_dir=base.run_dir)
        result = Pipeline(config).run()
        if result["status"] != "finished":
            print(f"[scenarios] {name}: {result['status']}; rerun to resume")
            return
        run = scenarios.read_run(config.run_dir)
        rows.append(scenarios.scenario_row(name, run, config.monitor))
        histories[name] = run["history"]
        out = pathlib.Path(_OUT.value or pathlib.Path(config.run_dir).parent)
    table = scenarios.table_markdown(rows)
    sweep_md, chosen = _sweep_markdown(histories)
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Failure-mode scenarios on the synthetic task\n",
        "PPO on each scenario's reward model, from one SFT policy; judged by gold r*. The lead "
        "is iterations before the gold peak (negative: after). Gold-free warnings are replayed "
        "from each run's logged statistics under the current default thresholds "
        "(`MonitorConfig`).\n",
        table,
        "\n## Gold-free monitors against thresholds\n",
        "Each cell: first iteration the logged statistic crossed the threshold (lead before the "
        "gold peak).",
        sweep_md,
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "report.json").write_text(json.dumps({"rows": rows, "sweeps": chosen}, indent=2))
    print(table)
    print(f"[scenarios] report: {out / 'report.md'}")


if __name__ == "__main__":
    app.run(main)
