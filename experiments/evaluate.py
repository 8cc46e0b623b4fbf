"""Judges trained policies on a prompt file and writes a report (``<run_dir>/report.md``): an
alias of `rlhf-jax evaluate`.

    python experiments/evaluate.py --config configs/evaluate.py:smoke [--config.x.y=...]
"""

import sys

from rlhf_jax import interrupts

interrupts.install()  # before the heavy imports: a signal in start-up is caught too

from rlhf_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
