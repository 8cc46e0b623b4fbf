"""One process of the two-process reward-model step test (run by test_distributed.py).

python tests/distributed_worker.py PROCESS_ID NUM_PROCESSES PORT OUT_JSON
"""

import json
import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"

import jax

jax.config.update("jax_num_cpu_devices", 2)

import functools  # noqa: E402

import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from training_testing import RM, init_state, pair_batch, tiny_reward_model  # noqa: E402

from rlhf_jax import sharding  # noqa: E402
from rlhf_jax.training import reward  # noqa: E402
from rlhf_jax.training import state as state_lib  # noqa: E402


def main():
    process_id, num_processes, port, out = sys.argv[1:]
    process_id, num_processes = int(process_id), int(num_processes)
    sharding.initialize_distributed(f"localhost:{port}", num_processes, process_id)
    assert jax.process_count() == num_processes and jax.device_count() == 2 * num_processes
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=-1, tensor=1))
    tx = optax.sgd(0.5)  # linear in the gradient, so parameters compare tightly
    state, shardings, graphdef = init_state(tiny_reward_model, tx, mesh)
    step = state_lib.jit_train_step(
        functools.partial(reward.reward_pair_loss, graphdef=graphdef, config=RM),
        tx,
        shardings,
        mesh,
    )
    batch = pair_batch(0, batch=8)
    rows = 8 // num_processes
    local = {k: v[process_id * rows : (process_id + 1) * rows] for k, v in batch.items()}
    state, metrics = step(state, sharding.shard_batch(local, mesh))
    params = multihost_utils.process_allgather(state.params, tiled=True)
    result = {
        "loss": float(metrics["loss"]),
        "accuracy": float(metrics["accuracy"]),
        "params": [np.asarray(p).ravel().tolist() for p in jax.tree.leaves(params)],
    }
    if process_id == 0:
        with open(out, "w") as f:
            json.dump(result, f)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
