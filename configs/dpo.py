"""DPO (and IPO, cDPO, rDPO, SLiC, SimPO, ORPO via dpo.loss_type).

Variants: smoke (default), gpt2, pythia1b_tldr, qwen05b_hh.

    python experiments/train_dpo.py --config configs/dpo.py:smoke
    python experiments/train_dpo.py --config configs/dpo.py:pythia1b_tldr \\
        --config.model.hf_path=checkpoints/pythia-1b-deduped

Every field is documented in `rlhf_jax/training/presets.py`; override any on the command
line, e.g. `--config.optimizer.learning_rate=1e-5 --config.mesh.tensor=2`.
"""

from rlhf_jax.training.presets import phase_config


def get_config(arg=None):
    return phase_config("dpo", arg)
