"""Metric writers: a console progress bar with rate and ETA, JSONL, and TensorBoard.

Only process 0 writes. Metrics arrive as dicts of scalars (jax or NumPy); fetching them is the
one host sync a training loop makes, so loops call ``write`` every ``log_every`` steps only.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np


def jsonable(value: Any) -> Any:
    """Plain JSON types from dataclasses, mappings, tuples, NumPy/JAX scalars and arrays, paths.

    Non-finite floats become None (JSON has no NaN); keys become strings.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray | jax.Array):
        return jsonable(np.asarray(value).tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, pathlib.PurePath):
        return str(value)
    return value


def to_floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Fetches scalar metrics to the host as Python floats."""
    fetched = jax.device_get(dict(metrics))
    return {k: float(np.asarray(v)) for k, v in fetched.items()}


def _wandb_run(project: str, log_dir, description: str, run_config):
    """A Weights & Biases run logging beside the JSONL; resumed (same id) when the run
    directory resumes. Optional: nothing else needs ``wandb`` installed."""
    try:
        import wandb
    except ImportError:
        raise ImportError(
            f"wandb_project={project!r} needs Weights & Biases: pip install wandb"
        ) from None
    directory = pathlib.Path(log_dir) if log_dir is not None else pathlib.Path.cwd()
    directory.mkdir(parents=True, exist_ok=True)
    id_file = directory / "wandb_id"
    if id_file.is_file():
        run_id = id_file.read_text().strip()
    else:
        run_id = wandb.util.generate_id()
        id_file.write_text(run_id)
    run = wandb.init(
        project=project,
        id=run_id,
        resume="allow",
        dir=str(directory),
        name=f"{directory.parent.name}-{description}",
        config=None if run_config is None else jsonable(run_config),
    )
    # Our step as a metric rather than W&B's own step counter, which drops every row below its
    # maximum: after a resume from an earlier checkpoint the re-run steps are logged again.
    run.define_metric("step")
    run.define_metric("*", step_metric="step")
    return run


def _short(key: str) -> str:
    """A metric's name on the progress bar: without its group (``objective/kl`` → ``kl``)."""
    return key.rsplit("/", 1)[-1]


class MetricWriter:
    """Writes to any of: the console (rich progress bar), ``metrics.jsonl``, TensorBoard."""

    def __init__(
        self,
        log_dir: str | pathlib.Path | None,
        *,
        total_steps: int,
        description: str = "train",
        console: bool = True,
        tensorboard: bool = True,
        show: tuple[str, ...] = ("loss",),
        wandb_project: str | None = None,
        run_config=None,
    ):
        self.active = jax.process_index() == 0
        self.total_steps = total_steps
        self.show = show
        self._jsonl = None
        self._tb = None
        self._wandb = None
        self._progress = None
        self._start = time.perf_counter()
        if not self.active:
            return
        if log_dir is not None:
            log_dir = pathlib.Path(log_dir)
            log_dir.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(log_dir / "metrics.jsonl", "a")
            if tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(str(log_dir / "tensorboard"))
        if wandb_project is not None:
            self._wandb = _wandb_run(wandb_project, log_dir, description, run_config)
        if console:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            # Off a terminal (a log file, a pipe) rich assumes 80 columns and cuts the line;
            # there the line may be as long as it needs.
            console_out = Console()
            if not console_out.is_terminal:
                console_out = Console(width=200)
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(bar_width=24),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[metrics]}", markup=False),
                console=console_out,
            )
            self._progress.start()
            # Until the first log, the step is compiling (tens of seconds for a large model).
            self._task = self._progress.add_task(
                description, total=total_steps, rate="compiling…", metrics=""
            )
        self._shown: dict[str, str] = {"metrics": "", "rate": "compiling…"}

    def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, float]:
        """Records ``metrics`` after ``step`` completed steps; returns them as floats."""
        values = to_floats(metrics)
        if not self.active:
            return values
        elapsed = time.perf_counter() - self._start
        record = {"step": step, "time": round(elapsed, 3), **values}
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        if self._tb is not None:
            for key, value in values.items():
                if math.isfinite(value):
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log({"step": step, **{k: v for k, v in values.items() if math.isfinite(v)}})
        if self._progress is not None:
            # A write without the shown metrics (a held-out evaluation) keeps the bar's.
            shown = "  ".join(f"{_short(k)} {values[k]:.4g}" for k in self.show if k in values)
            rate = values.get("steps_per_second")
            if shown:
                self._shown["metrics"] = shown
            if rate is not None:
                self._shown["rate"] = f"{rate:.2f} it/s"
            self._progress.update(self._task, completed=step, **self._shown)
        return values

    def advance(self, step: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step)

    def print(self, message: str) -> None:
        if not self.active:
            return
        if self._progress is not None:  # as written: "[sft] ..." is not rich markup
            self._progress.console.print(message, markup=False, highlight=False)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
