"""Config presets for RL (``configs/ppo.py``): PPO against a reward model, GRPO/RLOO against
reward functions, or both at once.

Variants (the ``arg`` of ``get_config``):
  smoke          PPO (GAE, a critic from the reward model) with a reward model and a reward
                 function together, on the smoke data, from scratch — CPU seconds; the tests'
  grpo_smoke     GRPO, K = 4 samples per prompt, reward functions only, no reward model
  pythia1b_tldr  PPO on TL;DR as in Huang et al. 2024 ("The N+ implementation details of RLHF
                 with PPO"): the SFT and reward-model artifacts of the offline phases
  qwen05b_hh     PPO on Anthropic HH (helpful-base) with Qwen2.5-0.5B
  grpo_qwen05b   GRPO on maths answers (a file with "prompt" and "answer" columns, e.g.
                 GSM8K's question and answer), numeric answer and format rewards, β = 0
Real models are read from local directories or artifacts (``policy.artifact`` /
``policy.hf_path``, ``reward.artifact`` / ``reward.hf_path``).
"""

from __future__ import annotations

import ml_collections

from rlhf_jax import checkpoint as ckpt_lib
from rlhf_jax import models, rewards
from rlhf_jax.placement import ModelSource
from rlhf_jax.presets import SMOKE_DATA, SMOKE_MODEL
from rlhf_jax.training.config import config_dict
from rlhf_jax.training.optimizer import OptimizerConfig
from rlhf_jax.training.ppo import PPOConfig, PPORunConfig

RL_VARIANTS = ("smoke", "grpo_smoke", "pythia1b_tldr", "qwen05b_hh", "grpo_qwen05b")


def _smoke(grpo: bool) -> PPORunConfig:
    tokenizer = str(SMOKE_DATA / "tokenizer")
    model = models.ModelConfig(**SMOKE_MODEL, eos_token_ids=(2,))
    opt = OptimizerConfig(learning_rate=1e-3, schedule="constant", eps=1e-5)
    # The smoke prompts' "completion" column is the reference answer.
    match = {"exact_match": {"column": "completion"}}
    if grpo:
        ppo = PPOConfig(
            response_length=6, temperature=1.0, advantage_estimator="grpo", samples_per_prompt=4,
            ppo_epochs=1, num_minibatches=2, policy_optimizer=opt, critic_optimizer=opt,
        )  # fmt: skip
        sources = rewards.RewardsConfig(
            functions=("exact_match", "length_penalty"), weights=(1.0, 0.1), kwargs=match
        )
        reward, per_iteration = None, 4
    else:
        ppo = PPOConfig(
            response_length=6, temperature=1.0, reward_norm_prompts=16, ppo_epochs=2,
            num_minibatches=2, policy_optimizer=opt, critic_optimizer=opt,
        )  # fmt: skip
        sources = rewards.RewardsConfig(functions=("exact_match",), kwargs=match)
        reward, per_iteration = ModelSource(init=model, tokenizer=tokenizer), 8
    return PPORunConfig(
        run_dir=f"runs/{'grpo_smoke' if grpo else 'smoke'}/ppo",
        policy=ModelSource(init=model, tokenizer=tokenizer),
        reward=reward,
        rewards=sources,
        prompts=str(SMOKE_DATA / "sft.jsonl"),
        prompt_length=8,
        prompts_per_iteration=per_iteration,
        iterations=4,
        ppo=ppo,
        checkpoint=ckpt_lib.CheckpointConfig(keep=2),
    )


def _pythia_tldr() -> PPORunConfig:
    # Huang et al. 2024: 1M episodes of 512 prompts, 53 response tokens at T = 0.7, β = 0.05,
    # −1 for no EOS, reward whitening off and normalisation on, Adam ε 1e-5, lr 3e-6, 4 epochs
    # over minibatches of 64, the critic from the reward model.
    opt = OptimizerConfig(learning_rate=3e-6, schedule="linear", eps=1e-5)
    return PPORunConfig(
        run_dir="runs/pythia1b_tldr/ppo",
        policy=ModelSource(artifact="runs/pythia1b_tldr/sft/artifact", dtype="bfloat16"),
        reward=ModelSource(artifact="runs/pythia1b_tldr/reward/artifact", dtype="bfloat16"),
        prompts="trl-lib/tldr",
        prompt_length=512,
        prompts_per_iteration=512,
        iterations=1953,
        ppo=PPOConfig(
            response_length=53,
            temperature=0.7,
            kl_coef=0.05,
            ppo_epochs=4,
            num_minibatches=8,
            grad_accum_steps=4,
            policy_optimizer=opt,
            critic_optimizer=opt,
        ),
        checkpoint=ckpt_lib.CheckpointConfig(keep=2),
    )


def _qwen_hh() -> PPORunConfig:
    opt = OptimizerConfig(learning_rate=1e-6, schedule="constant", eps=1e-5)
    return PPORunConfig(
        run_dir="runs/qwen05b_hh/ppo",
        policy=ModelSource(artifact="runs/qwen05b_hh/sft/artifact", dtype="bfloat16"),
        reward=ModelSource(artifact="runs/qwen05b_hh/reward/artifact", dtype="bfloat16"),
        prompts="trl-lib/hh-rlhf-helpful-base",
        prompt_length=512,
        prompts_per_iteration=128,
        iterations=1000,
        ppo=PPOConfig(
            response_length=128,
            temperature=0.7,
            kl_coef=0.05,
            ppo_epochs=4,
            num_minibatches=4,
            grad_accum_steps=4,
            policy_optimizer=opt,
            critic_optimizer=opt,
        ),
        checkpoint=ckpt_lib.CheckpointConfig(keep=2),
    )


def _grpo_qwen() -> PPORunConfig:
    # DeepSeekMath / DAPO-style GRPO: K = 8, no KL (β = 0 by default), clip-higher, token-mean
    # loss, a numeric answer check plus a small format reward, DAPO's overlong shaping.
    opt = OptimizerConfig(learning_rate=1e-6, schedule="constant", weight_decay=0.1)
    return PPORunConfig(
        run_dir="runs/grpo_qwen05b/ppo",
        policy=ModelSource(hf_path="checkpoints/qwen2.5-0.5b-instruct", dtype="bfloat16"),
        rewards=rewards.RewardsConfig(
            functions=("numeric_match", "format_match", "overlong_penalty"),
            weights=(1.0, 0.1, 1.0),
            kwargs={"overlong_penalty": {"cache_length": 64}},
        ),
        prompts="data/gsm8k_train.jsonl",
        prompt_length=256,
        prompts_per_iteration=64,
        iterations=500,
        ppo=PPOConfig(
            response_length=512,
            temperature=1.0,
            advantage_estimator="grpo",
            samples_per_prompt=8,
            clip_eps=0.2,
            clip_eps_high=0.28,
            ppo_epochs=1,
            num_minibatches=4,
            grad_accum_steps=4,
            dynamic_sampling=True,
            policy_optimizer=opt,
            critic_optimizer=opt,
        ),
        checkpoint=ckpt_lib.CheckpointConfig(keep=2),
    )


def rl_config(arg: str | None) -> ml_collections.ConfigDict:
    """The ConfigDict of the RL variant ``arg`` (every field documented in its dataclass:
    `PPORunConfig`, `PPOConfig`, `RewardsConfig`)."""
    variant = arg or "smoke"
    builders = {
        "smoke": lambda: _smoke(False),
        "grpo_smoke": lambda: _smoke(True),
        "pythia1b_tldr": _pythia_tldr,
        "qwen05b_hh": _qwen_hh,
        "grpo_qwen05b": _grpo_qwen,
    }
    if variant not in builders:
        raise ValueError(f"unknown config variant {variant!r}; expected one of {RL_VARIANTS}")
    return config_dict(builders[variant]())
