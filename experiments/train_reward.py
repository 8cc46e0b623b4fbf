"""Runs the reward phase from a config file.

    python experiments/train_reward.py --config configs/reward.py:smoke [--config.x.y=...]

Multi-host: start one process per host with RLHF_JAX_COORDINATOR, RLHF_JAX_NUM_PROCESSES and
RLHF_JAX_PROCESS_ID set (or on a cluster JAX detects by itself).
"""

from rlhf_jax import interrupts

interrupts.install()  # before the heavy imports: a signal in start-up is caught too

from absl import app
from ml_collections import config_flags

from rlhf_jax.training.entry import run_from_config

_CONFIG = config_flags.DEFINE_config_file("config", None, "Phase config file.", lock_config=True)


def main(argv):
    del argv
    run_from_config(_CONFIG.value, kind="reward")


if __name__ == "__main__":
    app.run(main)
