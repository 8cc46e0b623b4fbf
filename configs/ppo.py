"""RL: PPO against a reward model, GRPO/RLOO against reward functions, or both.

Variants: smoke (default), grpo_smoke, pythia1b_tldr, qwen05b_hh, grpo_qwen05b.

    python experiments/train_ppo.py --config configs/ppo.py:smoke
    python experiments/train_ppo.py --config configs/ppo.py:grpo_smoke
    python experiments/train_ppo.py --config configs/ppo.py:pythia1b_tldr \\
        --config.policy.artifact=runs/pythia1b_tldr/sft/artifact \\
        --config.reward.artifact=runs/pythia1b_tldr/reward/artifact

Every field is documented in its dataclass (`rlhf_jax/training/ppo/runner.py` PPORunConfig,
`rlhf_jax/training/ppo/config.py` PPOConfig, `rlhf_jax/rewards/sources.py` RewardsConfig); the
variants are in `rlhf_jax/presets/rl.py`. Override any field on the command line, e.g.
`--config.ppo.kl_coef=0.02 --config.rewards.functions="('numeric_match',)"`.
"""

from rlhf_jax.presets.rl import rl_config


def get_config(arg=None):
    return rl_config(arg)
