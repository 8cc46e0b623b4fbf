"""The host loop every offline phase shares: batches in, steps, logs, checkpoints, faults.

Python only iterates; each iteration places one batch on the mesh and calls the phase's jitted
step. The loop owns the things a long run on preemptible machines needs:
- resume: the latest checkpoint (state + data position) is restored before the first step, so
  an interrupted run continues exactly where it stopped;
- SIGTERM/SIGINT: the current step finishes, a checkpoint is written, and the loop returns
  ``"interrupted"`` (the caller exits cleanly);
- non-finite loss or gradient: the step never applies such an update; with
  ``skip_nonfinite=False`` the loop stops with ``NonFiniteError`` naming the step (checked at
  every log and before every save, so no checkpoint ever holds a bad state), otherwise it
  counts them (``nonfinite_updates``) and goes on.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal

import jax
import numpy as np

from rlhf_jax import sharding as sharding_lib
from rlhf_jax.checkpoint import PhaseCheckpointer
from rlhf_jax.logging import MetricWriter, to_floats


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


def _check_finite(state, *, skip_nonfinite: bool) -> None:
    if skip_nonfinite:
        return
    count = int(jax.device_get(state.nonfinite_count))
    if count:
        step = int(jax.device_get(state.first_nonfinite_step))
        raise NonFiniteError(
            f"non-finite loss or gradient at step {step}; the update was not applied and the "
            "last checkpoint is intact. Lower the learning rate, check the data, or set "
            "skip_nonfinite=True to skip such updates."
        )


def run_loop(
    *,
    state,
    step_fn: Callable,
    batches: Iterator[dict[str, np.ndarray]],
    data_state: Callable[[], dict],
    mesh,
    total_steps: int,
    checkpointer: PhaseCheckpointer | None,
    writer: MetricWriter,
    log_every: int = 10,
    skip_nonfinite: bool = False,
    eval_fn: Callable[[Any], dict] | None = None,
    eval_every: int = 0,
    stop_after: int | None = None,
) -> tuple[Any, Literal["finished", "interrupted"]]:
    """Runs ``step_fn`` from ``state.step`` up to ``total_steps``; returns ``(state, status)``.

    ``batches`` yields host-local NumPy batches; ``data_state()`` reports the iterator position
    after the batches taken so far (saved with the state). ``stop_after`` ends the run early
    as if interrupted (tests use it to cut a run in the middle).
    """
    step = int(jax.device_get(state.step))
    status: Literal["finished", "interrupted"] = "finished"
    last_log = time.perf_counter()
    steps_since_log = 0
    writer.advance(step)
    with interrupt_flag() as flag:
        while step < total_steps:
            batch = sharding_lib.shard_batch(next(batches), mesh)
            state, metrics = step_fn(state, batch)
            step += 1
            steps_since_log += 1
            if step % log_every == 0 or step == total_steps:
                now = time.perf_counter()
                metrics = dict(metrics, steps_per_second=steps_since_log / (now - last_log))
                last_log, steps_since_log = now, 0
                _check_finite(state, skip_nonfinite=skip_nonfinite)
                writer.write(step, metrics)
            else:
                writer.advance(step)
            if (
                eval_fn is not None
                and eval_every
                and (step % eval_every == 0 or step == total_steps)
            ):
                eval_metrics = {f"eval/{k}": v for k, v in to_floats(eval_fn(state)).items()}
                writer.write(step, eval_metrics)
            interrupted = flag["signal"] is not None or (
                stop_after is not None and step >= stop_after
            )
            if checkpointer is not None:
                force = interrupted or step == total_steps
                if force or step % checkpointer.config.save_every == 0:
                    _check_finite(state, skip_nonfinite=skip_nonfinite)
                    checkpointer.save(step, state, data_state(), force=force)
            if interrupted:
                status = "interrupted"
                reason = flag["signal"] or f"stop_after={stop_after}"
                writer.print(f"Stopped at step {step} ({reason}); checkpoint saved.")
                break
    if checkpointer is not None:
        checkpointer.wait()
    _check_finite(state, skip_nonfinite=skip_nonfinite)
    return state, status
