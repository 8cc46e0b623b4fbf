"""SIGTERM and SIGINT as a flag that code polls at safe points, for the whole process.

A preempted job gets SIGTERM; a person presses Ctrl-C. Either must stop a run where everything
written is consistent (a checkpoint finished, a phase's output complete), then exit 0 so the
same command resumes. `install()` (first thing in a script, before the heavy imports) turns the
signals into a flag; `interrupt_flag()` yields the flag in force (installing one if there is
none); the training loop, the phases and the pipeline check it between steps and phases.
A signal never interrupts compiled code or a write half way.

This module imports nothing heavy, so scripts can install it before importing JAX.
"""

from __future__ import annotations

import contextlib
import signal

_ACTIVE: list[dict] = []  # the flag in force (the outermost one), if any


def _handle() -> tuple[dict, dict]:
    """Installs handlers that set a new flag; returns it and the handlers they replaced."""
    flag = {"signal": None}

    def handler(signum, _frame):
        flag["signal"] = signal.Signals(signum).name

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: no handlers, no flag
            pass
    return flag, previous


@contextlib.contextmanager
def interrupt_flag():
    """The flag in force, or (when there is none) a new one for the duration (the old
    handlers restored after). Nested uses share the outermost flag, so an entry point that
    wraps a whole run (start-up, the loop, the final save, the pipeline's other phases)
    catches a signal wherever it arrives, and the loop, the phases and the pipeline stop at
    their next safe point."""
    if _ACTIVE:
        yield _ACTIVE[-1]
        return
    flag, previous = _handle()
    _ACTIVE.append(flag)
    try:
        yield flag
    finally:
        _ACTIVE.pop()
        for sig, old in previous.items():
            signal.signal(sig, old)


def interrupted() -> str | None:
    """The signal caught so far (its name), or None."""
    return _ACTIVE[-1]["signal"] if _ACTIVE else None


def install() -> dict:
    """Installs the handlers for the rest of the process (a script's first statement); returns
    the flag every later `interrupt_flag()` shares."""
    if not _ACTIVE:
        _ACTIVE.append(_handle()[0])
    return _ACTIVE[-1]
