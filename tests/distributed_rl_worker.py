"""One process of the two-process RL test (run by test_distributed_rl.py).

python tests/distributed_rl_worker.py PROCESS_ID NUM_PROCESSES PORT OUT_JSON ARTIFACTS ESTIMATOR
"""

import json
import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"

import jax

jax.config.update("jax_num_cpu_devices", 2)

import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from rl_testing import rl_config  # noqa: E402

from rlhf_jax import sharding  # noqa: E402
from rlhf_jax.training import ppo as ppo_lib  # noqa: E402


def main():
    process_id, num_processes, port, out, artifacts, estimator = sys.argv[1:]
    process_id, num_processes = int(process_id), int(num_processes)
    sharding.initialize_distributed(f"localhost:{port}", num_processes, process_id)
    assert jax.process_count() == num_processes and jax.device_count() == 2 * num_processes
    config = rl_config(artifacts, os.path.dirname(out) + "/run", estimator)
    result = ppo_lib.run_ppo(config)
    policy = multihost_utils.process_allgather(result["state"].policy, tiled=True)
    payload = {
        "history": result["history"],
        "policy": [np.asarray(p).ravel().tolist() for p in jax.tree.leaves(policy)],
    }
    if process_id == 0:
        with open(out, "w") as f:
            json.dump(payload, f)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
