"""Reward model (Bradley–Terry).

Variants: smoke (default), gpt2, pythia1b_tldr, qwen05b_hh.

    python experiments/train_reward.py --config configs/reward.py:smoke
    python experiments/train_reward.py --config configs/reward.py:pythia1b_tldr \\
        --config.model.hf_path=checkpoints/pythia-1b-deduped

Every field is documented in `rlhf_jax/training/presets.py`; override any on the command
line, e.g. `--config.optimizer.learning_rate=1e-5 --config.mesh.tensor=2`.
"""

from rlhf_jax.training.presets import phase_config


def get_config(arg=None):
    return phase_config("reward", arg)
