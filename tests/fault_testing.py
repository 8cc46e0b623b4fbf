"""Running the experiment scripts as a user does, and hurting them: signals at chosen moments,
kill -9, and comparing what they leave behind with an uninterrupted run's."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

ROOT = pathlib.Path(__file__).resolve().parents[1]
QUIET = ["--config.console=False", "--config.tensorboard=False"]
# Per script: its config file and the overrides that make a short run with frequent checkpoints.
SCRIPTS = {
    "sft": ("train_sft.py", "sft.py:smoke", ["--config.total_steps=24"]),
    "reward": ("train_reward.py", "reward.py:smoke", ["--config.total_steps=24"]),
    "dpo": ("train_dpo.py", "dpo.py:smoke", ["--config.total_steps=24"]),
    "ppo": ("train_ppo.py", "ppo.py:smoke", ["--config.iterations=10"]),
}
EVERY = {"ppo": ["--config.checkpoint.save_every=2"]}


def command(phase: str, run_dir: pathlib.Path, *extra: str) -> list[str]:
    script, config, overrides = SCRIPTS[phase]
    cadence = EVERY.get(phase, ["--config.checkpoint.save_every=4"])
    return [
        sys.executable,
        str(ROOT / "experiments" / script),
        "--config",
        f"{ROOT}/configs/{config}",
        f"--config.run_dir={run_dir}",
        "--config.log_every=1",
        *overrides,
        *cadence,
        *QUIET,
        *extra,
    ]


def env() -> dict:
    # One CPU device, as a user's laptop: the tests' fake devices are for in-process tests.
    return {k: v for k, v in os.environ.items() if not k.startswith("XLA_FLAGS")}


def run(cmd, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env())


def metric_lines(run_dir: pathlib.Path) -> int:
    path = run_dir / "logs" / "metrics.jsonl"
    return path.read_text().count("\n") if path.exists() else 0


def hurt(cmd, run_dir: pathlib.Path, *, sig: int, after_lines: int | None = None,
         after_seconds: float | None = None, timeout: int = 600) -> tuple[int, str]:  # fmt: skip
    """Starts ``cmd``, sends ``sig`` once ``after_lines`` metric rows are written (or after
    ``after_seconds``), and returns (exit status, output)."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env()
    )
    deadline = time.time() + timeout
    if after_seconds is not None:
        time.sleep(after_seconds)
    else:
        while metric_lines(run_dir) < after_lines and proc.poll() is None:
            if time.time() > deadline:
                proc.kill()
                raise TimeoutError(f"{cmd} wrote no {after_lines} metric rows in {timeout} s")
            time.sleep(0.05)
    if proc.poll() is None:
        proc.send_signal(sig)
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def params(artifact: pathlib.Path) -> list[np.ndarray]:
    with ocp.StandardCheckpointer() as ckptr:
        tree = ckptr.restore(artifact / "params")
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def same_params(a: pathlib.Path, b: pathlib.Path) -> bool:
    pa, pb = params(a / "artifact"), params(b / "artifact")
    return len(pa) == len(pb) and all(np.array_equal(x, y) for x, y in zip(pa, pb, strict=True))


def history(run_dir: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


SIGNALS = {"SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT, "SIGKILL": signal.SIGKILL}
