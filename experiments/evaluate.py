"""Judges trained policies on a prompt file and writes a report (``<run_dir>/report.md``).

python experiments/evaluate.py --config configs/evaluate.py:smoke [--config.x.y=...]
"""

from rlhf_jax import interrupts

interrupts.install()  # before the heavy imports: a signal in start-up is caught too

import json

from absl import app
from absl import logging as absl_logging
from ml_collections import config_flags

from rlhf_jax.policy_eval import PolicyEvalConfig, evaluate_policies
from rlhf_jax.training.config import build

_CONFIG = config_flags.DEFINE_config_file("config", None, "Evaluation config.", lock_config=True)


def main(argv):
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)
    result = evaluate_policies(build(PolicyEvalConfig, _CONFIG.value.to_dict()))
    print(f"[evaluate] {json.dumps(result['policies'])}")
    for name, w in result["win_rates"].items():
        print(
            f"[evaluate] win rate {name}: {w['rate']:.3f} [{w['ci_low']:.3f}, {w['ci_high']:.3f}]"
        )
    print(f"[evaluate] report: {result['report']}")


if __name__ == "__main__":
    app.run(main)
