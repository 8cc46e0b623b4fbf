"""Supervised fine-tuning.

Variants: smoke (default), gpt2, pythia1b_tldr, qwen05b_hh.

    python experiments/train_sft.py --config configs/sft.py:smoke
    python experiments/train_sft.py --config configs/sft.py:pythia1b_tldr \\
        --config.model.hf_path=checkpoints/pythia-1b-deduped

Every field is documented in `rlhf_jax/training/presets.py`; override any on the command
line, e.g. `--config.optimizer.learning_rate=1e-5 --config.mesh.tensor=2`.
"""

from rlhf_jax.training.presets import phase_config


def get_config(arg=None):
    return phase_config("sft", arg)
