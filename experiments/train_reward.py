"""Runs the reward phase from a config file: an alias of `rlhf-jax train reward`.

    python experiments/train_reward.py --config configs/reward.py:smoke [--config.x.y=...]

Multi-host: start one process per host with RLHF_JAX_COORDINATOR, RLHF_JAX_NUM_PROCESSES and
RLHF_JAX_PROCESS_ID set (or on a cluster JAX detects by itself).
"""

import sys

from rlhf_jax import interrupts

interrupts.install()  # before the heavy imports: a signal in start-up is caught too

from rlhf_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", "reward", *sys.argv[1:]]))
