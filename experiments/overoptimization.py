"""Runs the reward-model over-optimisation study (`rlhf_jax.synthetic.overoptimization`).

    python experiments/overoptimization.py --config configs/overoptimization.py

Rerunning resumes: finished arms are skipped, an interrupted one continues from its checkpoint.
"""

from rlhf_jax import interrupts

interrupts.install()  # before the heavy imports: a signal in start-up is caught too

from absl import app
from absl import logging as absl_logging
from ml_collections import config_flags

from rlhf_jax import sharding
from rlhf_jax.synthetic.overoptimization import Study, StudyConfig
from rlhf_jax.training.config import build

_CONFIG = config_flags.DEFINE_config_file("config", None, "Study config.", lock_config=True)


def main(argv):
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)
    sharding.initialize_distributed()
    result = Study(build(StudyConfig, _CONFIG.value.to_dict())).run()
    print(f"[study] {result['status']}")


if __name__ == "__main__":
    app.run(main)
