"""Runs the whole pipeline on the synthetic task (pretrain → SFT → preferences → RM → PPO/DPO
→ report). Rerunning resumes at the first unfinished phase.

    python experiments/run_pipeline.py --config configs/synthetic.py
"""

from rlhf_jax import interrupts

interrupts.install()  # before the heavy imports: a signal in start-up is caught too

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from rlhf_jax import sharding
from rlhf_jax.synthetic import PHASES, Pipeline, PipelineConfig
from rlhf_jax.training.config import build

_CONFIG = config_flags.DEFINE_config_file("config", None, "Pipeline config.", lock_config=True)
_STOP_AFTER = flags.DEFINE_enum("stop_after", None, PHASES, "End the run after this phase.")


def main(argv):
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)
    sharding.initialize_distributed()
    config = build(PipelineConfig, _CONFIG.value.to_dict())
    result = Pipeline(config).run(stop_after_phase=_STOP_AFTER.value)
    print(f"[pipeline] {result['status']}")


if __name__ == "__main__":
    app.run(main)
