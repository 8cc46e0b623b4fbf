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
    ):
        self.active = jax.process_index() == 0
        self.total_steps = total_steps
        self.show = show
        self._jsonl = None
        self._tb = None
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
        if console:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[metrics]}"),
            )
            self._progress.start()
            self._task = self._progress.add_task(
                description, total=total_steps, rate="", metrics=""
            )

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
        if self._progress is not None:
            shown = "  ".join(f"{k} {values[k]:.4g}" for k in self.show if k in values)
            rate = values.get("steps_per_second")
            self._progress.update(
                self._task,
                completed=step,
                metrics=shown,
                rate="" if rate is None else f"{rate:.2f} it/s",
            )
        return values

    def advance(self, step: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step)

    def print(self, message: str) -> None:
        if not self.active:
            return
        if self._progress is not None:
            self._progress.console.print(message)
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
