"""Two JAX processes on localhost (jax.distributed) run a reward-model step on one global batch
and agree with the single-process result."""

import functools
import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import optax
from training_testing import RM, init_state, pair_batch, tiny_reward_model

from rlhf_jax import sharding
from rlhf_jax.training import reward
from rlhf_jax.training import state as state_lib

WORKER = pathlib.Path(__file__).with_name("distributed_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_workers(worker: pathlib.Path, out: pathlib.Path, *args: str, timeout: int = 300) -> dict:
    """Runs ``worker PROCESS_ID 2 PORT OUT *args`` as two processes; returns OUT's JSON."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("XLA_FLAGS")}
    procs = [
        subprocess.Popen(
            [sys.executable, str(worker), str(i), "2", str(port), str(out), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]
    return json.loads(out.read_text())


def test_two_processes_match_one(tmp_path):
    multi = run_workers(WORKER, tmp_path / "result.json")

    mesh = sharding.make_mesh(sharding.MeshConfig(1, 1, 1), devices=jax.devices()[:1])
    tx = optax.sgd(0.5)  # linear in the gradient, so parameters compare tightly
    state, shardings, graphdef = init_state(tiny_reward_model, tx, mesh)
    step = state_lib.jit_train_step(
        functools.partial(reward.reward_pair_loss, graphdef=graphdef, config=RM),
        tx,
        shardings,
        mesh,
    )
    state, metrics = step(state, sharding.shard_batch(pair_batch(0, batch=8), mesh))
    np.testing.assert_allclose(multi["loss"], float(metrics["loss"]), rtol=1e-5)
    assert multi["accuracy"] == float(metrics["accuracy"])
    single = [np.asarray(p).ravel() for p in jax.tree.leaves(state.params)]
    assert len(single) == len(multi["params"])
    for a, b in zip(single, multi["params"], strict=True):
        np.testing.assert_allclose(np.asarray(b), a, rtol=1e-5, atol=2e-6)
