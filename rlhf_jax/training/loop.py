"""The host loop every phase shares, PPO included: steps, logs, checkpoints, resume, faults.

A phase hands the loop a *step adapter*, ``step_fn(state) -> (state, metrics)``, that takes
its own next batch (a batch of data, a batch of prompts), places it on the mesh and calls the
phase's compiled program(s). Python only iterates; the loop owns what a long run on preemptible
machines needs, once for every phase:
- resume (`Run.resume`): the latest checkpoint (state + data position) is restored before the
  first step, so an interrupted run continues exactly where it stopped;
- SIGTERM/SIGINT: the current step finishes, a checkpoint is written, and the loop returns
  ``"interrupted"`` (the caller exits cleanly);
- non-finite loss, gradient or update: the step never applies one (`grads.keep_if_finite`);
  with ``skip_nonfinite=False`` the loop stops with ``NonFiniteError`` naming the step (checked
  at every log and before every save, so no checkpoint ever holds a bad state, and a checkpoint
  still being written finishes first), otherwise it counts them (``nonfinite_updates``);
- metrics every ``log_every`` steps (the only host syncs), a progress bar, held-out evaluation.

A state is any pytree with ``step``, ``nonfinite_count`` and ``first_nonfinite_step``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

import jax

from rlhf_jax import checkpoint as ckpt_lib
from rlhf_jax.interrupts import interrupt_flag
from rlhf_jax.logging import MetricWriter, to_floats
from rlhf_jax.placement import abstract_like

__all__ = ["NonFiniteError", "Run", "RunLock", "RunLockedError", "check_finite"]

Status = Literal["finished", "interrupted"]


class NonFiniteError(FloatingPointError):
    """Training produced a non-finite loss, gradient or update."""


def check_finite(state, *, skip_nonfinite: bool = False, unit: str = "step") -> None:
    """Raises ``NonFiniteError`` if the state refused an update (unless ``skip_nonfinite``)."""
    if skip_nonfinite:
        return
    count = int(jax.device_get(state.nonfinite_count))
    if count:
        first = int(jax.device_get(state.first_nonfinite_step))
        raise NonFiniteError(
            f"non-finite loss, gradient or update in {unit} {first + 1}; it was not applied, and "
            f"checkpoints (which count completed {unit}s, at most {first} here) are intact. "
            "Lower the learning rate, check the data, or set skip_nonfinite=True to skip such "
            "updates."
        )


class RunLockedError(RuntimeError):
    """Another process is running in this run directory."""


class RunLock:
    """One run at a time in a directory: ``.lock.<process index>`` names the owner (host, pid).

    A lock whose process is gone (same host, no such pid) is stale: taken over, and said so.
    A live owner, or one on another host (whose liveness cannot be checked here), refuses the
    second start, naming it.
    """

    def __init__(self, directory: pathlib.Path, *, report=print):
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f".lock.{jax.process_index()}"
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = self._holder()
                if self._alive(holder):
                    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["started"]))
                    raise RunLockedError(
                        f"{directory} is in use by process {holder['pid']} on {holder['host']} "
                        f"(since {since}); wait for it or stop it, or use another run_dir. If "
                        f"that process is gone, delete {self.path}."
                    ) from None
                report(f"taking over the stale lock of a process gone: {holder}")
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            return
        raise RunLockedError(f"could not take {self.path}")

    def _holder(self) -> dict:
        try:
            holder = json.loads(self.path.read_text())
            return {"host": str(holder["host"]), "pid": int(holder["pid"]),
                    "started": float(holder["started"])}  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError):
            return {"host": socket.gethostname(), "pid": -1, "started": 0.0}  # unreadable: stale

    @staticmethod
    def _alive(holder: dict) -> bool:
        if holder["host"] != socket.gethostname():
            return True
        if holder["pid"] <= 0:
            return False
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


class Run:
    """One run directory: ``logs/`` (metrics), ``checkpoints/`` (resume) and ``artifact/``.

    Takes the directory's lock (`RunLock`), opens the metric writer and the checkpointer,
    resumes, drives the loop, and on exit (errors included) waits for checkpoint writes in
    flight, closes both and releases the lock.
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
        wandb_project: str | None = None,
        run_config=None,
        show: tuple[str, ...] = ("loss",),
        unit: str = "step",
        saves_per_run: int = 4,
        min_save_every: int = 1,
    ):
        self.dir = pathlib.Path(run_dir).absolute()
        self.description = description
        self.total_steps = total_steps
        self.unit = unit  # what a step is called in messages ("iteration" for PPO)
        self.lock = RunLock(self.dir)
        # A cadence left unset follows the run's length.
        every = checkpoint.every(total_steps, saves_per_run=saves_per_run, minimum=min_save_every)
        checkpoint = dataclasses.replace(checkpoint, save_every=every)
        try:
            self.writer = MetricWriter(
                self.dir / "logs",
                total_steps=total_steps,
                description=description,
                console=console,
                tensorboard=tensorboard,
                wandb_project=wandb_project,
                run_config=run_config,
                show=show,
            )
            self.checkpointer = ckpt_lib.PhaseCheckpointer(
                self.dir / "checkpoints", fingerprint=fingerprint, config=checkpoint
            )
        except BaseException:
            self.lock.release()
            raise

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
        restored, data_state = self.checkpointer.restore(
            abstract_like(state, shardings), report=self.print
        )
        if hasattr(state, "frozen") and restored.frozen is None:  # not in checkpoints
            restored = restored.replace(frozen=state.frozen)
        state = restored
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
                if flag["signal"] is not None:  # caught during start-up: nothing new to save
                    self.print(f"stopped before {unit} {step + 1} ({flag['signal']})")
                    return state, "interrupted"
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

    def save_artifact(self, params, meta: Mapping[str, Any], *, tokenizer=None) -> pathlib.Path:
        """Writes the hand-off to the next phase: ``params``, ``meta`` and the ``tokenizer`` in
        ``artifact/``."""
        path = self.dir / "artifact"
        ckpt_lib.save_artifact(path, params, meta=meta, tokenizer=tokenizer)
        return path

    def close(self) -> None:
        try:
            self.checkpointer.close()
            self.writer.close()
        finally:
            self.lock.release()
