"""A report for any run directories: every phase's training curves, what each artifact was
made from, and for RL runs the reward, KL, length and monitor plots of `write_report`.

    write_run_report(["runs/sft", "runs/reward", "runs/ppo"], "runs/report")

A run directory is what a phase writes (`training.loop.Run`): ``logs/metrics.jsonl`` (one row
per log: step, time, metrics), for RL ``history.jsonl`` (one row per iteration), and once
finished ``artifact/artifact.json``. Curves are drawn as the logged points (faint) under their
exponential moving average, so a noisy metric's trend is visible.
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from rlhf_jax.checkpoint import artifact_exists, read_artifact_meta
from rlhf_jax.evaluation.plots import ema, figure, save_png
from rlhf_jax.evaluation.report import fmt, markdown_table, write_report

# Metrics shown first when a run logs them; the rest follow in the order logged.
PRIORITY = (
    "loss", "eval/loss", "accuracy", "eval/accuracy", "margin", "eval/margin",
    "objective/scores", "objective/kl", "objective/entropy", "gold/score", "response/length_mean",
)  # fmt: skip
HIDDEN = ("step", "time", "steps_per_second", "iteration")
MAX_CURVES = 9  # panels per run's figure; the markdown table lists every metric's last value


def _rows(path: pathlib.Path, *, x: str) -> list[dict]:
    """The logged rows, as the run's final trajectory: a last line still being written is left
    out, and rows a resume went back over (their ``x`` at or past a later row's resumed
    ``x``) give way to the rows written after the resume."""
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break  # being written (a live run)
            raise ValueError(f"{path}: line {number} is not JSON") from None
        at = row.get(x)
        if isinstance(at, int | float) and rows and at < rows[-1].get(x, at):
            rows = [r for r in rows if r.get(x, -math.inf) < at]  # a resume went back to at
        rows.append(row)
    return rows


def _series(rows: Sequence[Mapping], key: str, x: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r[x], r[key]) for r in rows if isinstance(r.get(key), int | float) and x in r]
    pts = [(a, b) for a, b in pts if b is not None and math.isfinite(b)]
    if not pts:
        return np.zeros(0), np.zeros(0)
    xs, ys = np.asarray(pts, np.float64).T
    return xs, ys


def _keys(rows: Sequence[Mapping]) -> list[str]:
    seen = dict.fromkeys(k for r in rows for k, v in r.items() if isinstance(v, int | float))
    keys = [k for k in seen if k not in HIDDEN]
    return sorted(keys, key=lambda k: PRIORITY.index(k) if k in PRIORITY else len(PRIORITY))


def plot_curves(path, title: str, rows: Sequence[Mapping], *, x: str, keys: Sequence[str]):
    """One panel per metric: the logged points and their moving average, against ``x``."""
    fig, axes = figure(len(keys), height=1.9)
    for ax, key in zip(axes, keys, strict=True):
        xs, ys = _series(rows, key, x)
        ax.plot(xs, ys, ".", ms=2.5, alpha=0.35, color="tab:blue")
        if len(ys) > 1:
            ax.plot(xs, ema(ys, span=max(2, len(ys) // 10)), "-", lw=1.4, color="tab:blue")
        ax.set_ylabel(key, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_title(title)
    axes[-1].set_xlabel(x)
    return save_png(fig, path)


def _name(run: pathlib.Path, taken: set[str]) -> str:
    name = run.name if run.name not in taken else f"{run.parent.name}_{run.name}"
    taken.add(name)
    return name


def write_run_report(run_dirs: Sequence[str | pathlib.Path], out_dir) -> pathlib.Path:
    """Writes ``report.md`` and the PNGs into ``out_dir``; returns the markdown's path."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = ["# Training runs", ""]
    taken: set[str] = set()
    for run_dir in map(pathlib.Path, run_dirs):
        if not run_dir.is_dir():
            raise FileNotFoundError(f"run directory not found: {run_dir}")
        name = _name(run_dir, taken)
        artifact = run_dir / "artifact"
        meta = read_artifact_meta(artifact) if artifact_exists(artifact) else {}
        metrics = _rows(run_dir / "logs" / "metrics.jsonl", x="step")
        history = _rows(run_dir / "history.jsonl", x="iteration")
        phase = meta.get("phase", "ppo" if history else "?")
        md += [f"## {name} ({phase})", "", f"`{run_dir}`", ""]
        if not metrics and not history:
            md += ["Nothing logged yet (no logs/metrics.jsonl).", ""]
            continue
        md += _made_from(meta)
        rows, x = (history, "iteration") if history else (metrics, "step")
        keys = _keys(rows)
        if keys:
            png = plot_curves(out / f"{name}_curves.png", name, rows, x=x, keys=keys[:MAX_CURVES])
            md += [f"![{name} training curves]({png.name})", ""]
        last = {k: _series(rows, k, x)[1] for k in keys}
        md += markdown_table(["metric", "first", "last", "logged"],
                     [[k, v[0], v[-1], len(v)] for k, v in last.items() if len(v)])  # fmt: skip
        if history:
            monitors_path = run_dir / "monitors.json"
            monitors = json.loads(monitors_path.read_text()) if monitors_path.exists() else None
            sub = write_report(
                out / name, runs={name: history}, monitors=monitors, title=f"{name}: RL report"
            )
            md += [f"RL report (reward vs KL, proxy and gold, length): [{name}/report.md]"
                   f"({name}/{sub.markdown.name})", ""]  # fmt: skip
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path


def _made_from(meta: Mapping) -> list[str]:
    if not meta:
        return ["Not finished: no artifact yet.", ""]
    data = ", ".join(f"`{d['path']}`" for d in meta.get("data", [])) or "–"
    rows = [
        ["steps", meta.get("steps", meta.get("iterations"))],
        ["base checkpoint", meta.get("base_checkpoint") or "random init"],
        ["data", data],
        ["tokenizer", "carried in the artifact" if meta.get("tokenizer") else "not recorded"],
        ["code", (meta.get("code") or {}).get("git") or (meta.get("code") or {}).get("rlhf_jax")],
    ]
    return markdown_table(["", ""], [[k, fmt(v) if isinstance(v, float) else v] for k, v in rows])
