"""Supervised fine-tuning.

Variants: smoke (default), gpt2, pythia1b_tldr, qwen05b_hh.

    python experiments/train_sft.py --config configs/sft.py:smoke
    python experiments/train_sft.py --config configs/sft.py:pythia1b_tldr \\
        --config.model.hf_path=checkpoints/pythia-1b-deduped

Every field is documented where it is defined, in its dataclass (`rlhf_jax/training/phase.py`,
the phase's module, `rlhf_jax/data/config.py`, …); the variants are in `rlhf_jax/presets`.
Override any field on the command line, e.g. `--config.optimizer.learning_rate=1e-5
--config.mesh.tensor=2`.
"""

from rlhf_jax.presets import phase_config


def get_config(arg=None):
    return phase_config("sft", arg)
