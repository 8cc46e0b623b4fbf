"""Config presets for judging policies outside training (``configs/evaluate.py``).

Variants:
  smoke       the smoke phases' SFT, DPO and PPO policies (``runs/smoke/*/artifact``), judged
              by the smoke reward model and an exact-match reward against the reference answers
  qwen05b_hh  the ``qwen05b_hh`` phases' SFT, PPO and DPO policies judged by their reward
              model on Anthropic HH prompts (point ``policies.<name>.artifact``,
              ``reward.artifact`` and ``prompts`` at your own); each artifact brings its
              tokenizer
"""

from __future__ import annotations

import dataclasses

import ml_collections

from rlhf_jax import rewards
from rlhf_jax.placement import ModelSource
from rlhf_jax.policy_eval import PolicyEvalConfig
from rlhf_jax.presets import SMOKE_DATA
from rlhf_jax.training.config import config_dict

EVAL_VARIANTS = ("smoke", "qwen05b_hh")


def _artifact(phase: str) -> dict:
    source = ModelSource(
        artifact=f"runs/smoke/{phase}/artifact", tokenizer=str(SMOKE_DATA / "tokenizer")
    )
    return dataclasses.asdict(source)


def eval_config(arg: str | None) -> ml_collections.ConfigDict:
    """The ConfigDict of the evaluation variant ``arg`` (fields: `PolicyEvalConfig`)."""
    variant = arg or "smoke"
    if variant not in EVAL_VARIANTS:
        raise ValueError(f"unknown config variant {variant!r}; expected one of {EVAL_VARIANTS}")
    if variant == "qwen05b_hh":
        return config_dict(_qwen_hh())
    config = PolicyEvalConfig(
        run_dir="runs/smoke/evaluate",
        policies={phase: _artifact(phase) for phase in ("sft", "dpo", "ppo")},
        baseline="sft",
        reward=ModelSource(
            artifact="runs/smoke/reward/artifact", tokenizer=str(SMOKE_DATA / "tokenizer")
        ),
        rewards=rewards.RewardsConfig(
            functions=("exact_match",), kwargs={"exact_match": {"column": "completion"}}
        ),
        prompts=str(SMOKE_DATA / "sft.jsonl"),
        prompt_length=8,
        num_prompts=64,
        samples_per_prompt=4,
        response_length=6,
    )
    return config_dict(config)


def _qwen_hh() -> PolicyEvalConfig:
    def artifact(phase):
        source = ModelSource(artifact=f"runs/qwen05b_hh/{phase}/artifact", dtype="bfloat16")
        return dataclasses.asdict(source)

    return PolicyEvalConfig(
        run_dir="runs/qwen05b_hh/evaluate",
        policies={phase: artifact(phase) for phase in ("sft", "ppo", "dpo")},
        baseline="sft",
        reward=ModelSource(artifact="runs/qwen05b_hh/reward/artifact", dtype="bfloat16"),
        prompts="trl-lib/hh-rlhf-helpful-base",
        prompt_split="test",
        prompt_length=512,
        num_prompts=256,
        samples_per_prompt=2,
        response_length=128,
        temperature=0.7,
        batch_size=32,
    )
