"""The host loop every phase shares, PPO included: steps, logs, checkpoints, resume, faults.

A phase hands the loop a *step adapter*, ``step_fn(state) -> (state, metrics)``, that takes
its own next batch (a batch of data, a batch of prompts), places it on the mesh and calls the
phase's compiled program(s). Python only iterates; the loop owns what a long run on preemptible
machines needs, once for every phase:
- resume (`Run.resume`): the latest checkpoint (state + data position) is restored before the
  first step, so an interrupted run continues exactly where it stopped;
- SIGTERM/SIGINT: the current step finishes, a checkpoint is written, and the loop returns
  ``"interrupted"`` (the caller exits cleanly);
- non-finite loss or gradient: the step never applies one (`grads.keep_if_finite`);
  with ``skip_nonfinite=False`` the loop stops with ``NonFiniteError`` naming the step (checked
  at every log and before every save, so no checkpoint ever holds a bad state, and a checkpoint
  still being written finishes first), otherwise it counts them (``nonfinite_updates``);
- metrics every ``log_every`` steps (the only host syncs), a progress bar, held-out evaluation.

A state is any pytree with ``step``, ``nonfinite_count`` and ``first_nonfinite_step``.
"""

from __future__ import annotations

import contextlib
import pathlib
import signal
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

import jax

from rlhf_jax import checkpoint as ckpt_lib
from rlhf_jax.logging import MetricWriter, to_floats
from rlhf_jax.placement import abstract_like

Status = Literal["finished", "interrupted"]


class NonFiniteError(FloatingPointError):
    """Training produced a non-finite loss or gradient."""


@contextlib.contextmanager
def interrupt_flag():
    """Turns SIGTERM and SIGINT into a flag the loop polls (restored on exit)."""
    flag = {"signal": None}

    def handler(signum, _frame):
        flag["signal"] = signal.Signals(signum).name

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: no handlers, no flag
            pass
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def check_finite(state, *, skip_nonfinite: bool = False, unit: str = "step") -> None:
    """Raises ``NonFiniteError`` if the state refused an update (unless ``skip_nonfinite``)."""
    if skip_nonfinite:
        return
    count = int(jax.device_get(state.nonfinite_count))
    if count:
        first = int(jax.device_get(state.first_nonfinite_step))
        raise NonFiniteError(
            f"non-finite loss or gradient in {unit} {first + 1}; it was not applied, and "
            f"checkpoints (which count completed {unit}s, at most {first} here) are intact. "
            "Lower the learning rate, check the data, or set skip_nonfinite=True to skip such "
            "updates."
        )


class Run:
    """One run directory: ``logs/`` (metrics), ``checkpoints/`` (resume) and ``artifact/``.

    Opens the metric writer and the checkpointer, resumes, drives the loop, and on exit
    (errors included) waits for checkpoint writes in flight and closes both.
    """

    def __init__(
        self,
        run_dir: str | pathlib.Path,
        *,
        description: str,
        total_steps: int,
        fingerprint: Mapping[str, Any],
        checkpoint: ckpt_lib.CheckpointConfig,
        console: bool = True,
        tensorboard: bool = True,
        show: tuple[str, ...] = ("loss",),
        unit: str = "step",
    ):
        self.dir = pathlib.Path(run_dir).absolute()
        self.description = description
        self.total_steps = total_steps
        self.unit = unit  # what a step is called in messages ("iteration" for PPO)
        self.writer = MetricWriter(
            self.dir / "logs",
            total_steps=total_steps,
            description=description,
            console=console,
            tensorboard=tensorboard,
            show=show,
        )
        self.checkpointer = ckpt_lib.PhaseCheckpointer(
            self.dir / "checkpoints", fingerprint=fingerprint, config=checkpoint
        )

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def print(self, message: str) -> None:
        self.writer.print(f"[{self.description}] {message}")

    def resume(self, state, shardings, restore_data: Callable[[dict], None]):
        """``(state, resumed)``: the latest checkpoint's state (into ``shardings``) and data
        position (handed to ``restore_data``), or ``state`` as given when there is none."""
        if self.checkpointer.latest_step() is None:
            return state, False
        state, data_state = self.checkpointer.restore(abstract_like(state, shardings))
        restore_data(data_state)
        self.print(f"resumed from {self.unit} {int(jax.device_get(state.step))}")
        return state, True

    def loop(
        self,
        state,
        step_fn: Callable[[Any], tuple[Any, Mapping[str, Any]]],
        data_state: Callable[[], dict],
        *,
        log_every: int,
        skip_nonfinite: bool = False,
        eval_fn: Callable[[Any], dict] | None = None,
        eval_every: int = 0,
        stop_after: int | None = None,
    ) -> tuple[Any, Status]:
        """Runs ``step_fn`` from ``state.step`` up to ``total_steps``; returns ``(state,
        status)``. ``data_state()`` reports the data position after the batches taken so far
        (saved with the state). ``stop_after`` ends the run early as if interrupted (tests
        use it to cut a run in the middle)."""
        total, unit = self.total_steps, self.unit
        writer, checkpointer = self.writer, self.checkpointer
        guard = lambda s: check_finite(s, skip_nonfinite=skip_nonfinite, unit=unit)
        step = int(jax.device_get(state.step))
        status: Status = "finished"
        last_log, steps_since_log = time.perf_counter(), 0
        writer.advance(step)
        try:
            with interrupt_flag() as flag:
                while step < total:
                    state, metrics = step_fn(state)
                    step += 1
                    steps_since_log += 1
                    if step % log_every == 0 or step == total:
                        now = time.perf_counter()
                        rate = steps_since_log / (now - last_log)
                        last_log, steps_since_log = now, 0
                        guard(state)
                        writer.write(step, dict(metrics, steps_per_second=rate))
                    else:
                        writer.advance(step)
                    if (
                        eval_fn is not None
                        and eval_every
                        and (step % eval_every == 0 or step == total)
                    ):
                        held_out = to_floats(eval_fn(state))
                        writer.write(step, {f"eval/{k}": v for k, v in held_out.items()})
                    stop = flag["signal"] or (
                        f"stop_after={stop_after}"
                        if stop_after is not None and step >= stop_after
                        else None
                    )
                    if stop or step == total or step % checkpointer.config.save_every == 0:
                        guard(state)
                        checkpointer.save(
                            step, state, data_state(), force=bool(stop) or step == total
                        )
                    if stop:
                        status = "interrupted"
                        self.print(f"stopped at {unit} {step} ({stop}); checkpoint saved")
                        break
        finally:
            # A checkpoint still being written (the last good one) finishes before any error.
            checkpointer.wait()
        guard(state)
        return state, status

    def save_artifact(self, params, meta: Mapping[str, Any]) -> pathlib.Path:
        """Writes the hand-off to the next phase: ``params`` and ``meta`` in ``artifact/``."""
        path = self.dir / "artifact"
        ckpt_lib.save_artifact(path, params, meta=meta)
        return path

    def close(self) -> None:
        self.checkpointer.close()
        self.writer.close()
