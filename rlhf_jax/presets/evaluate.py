"""Config presets for judging policies outside training (``configs/evaluate.py``).

Variants:
  smoke   the smoke phases' SFT, DPO and PPO policies (``runs/smoke/*/artifact``), judged by
          the smoke reward model and an exact-match reward against the reference answers
"""

from __future__ import annotations

import dataclasses

import ml_collections

from rlhf_jax import rewards
from rlhf_jax.placement import ModelSource
from rlhf_jax.policy_eval import PolicyEvalConfig
from rlhf_jax.presets import SMOKE_DATA
from rlhf_jax.training.config import config_dict

EVAL_VARIANTS = ("smoke",)


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
