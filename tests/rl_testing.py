"""A small RL run shared by the single- and two-process RL tests."""

from __future__ import annotations

from rlhf_jax import checkpoint as ckpt_lib
from rlhf_jax import presets, rewards, sharding
from rlhf_jax.placement import ModelSource
from rlhf_jax.training import ppo as ppo_lib
from rlhf_jax.training.optimizer import OptimizerConfig

TOKENIZER = str(presets.SMOKE_DATA / "tokenizer")
PROMPTS = str(presets.SMOKE_DATA / "sft.jsonl")


def first_word_matches(*, prompts, completions, completion, **_):
    """A text reward (run on each host for its own rows): the reference's first word first."""
    return [
        float(c.split()[:1] == r.split()[:1]) for c, r in zip(completions, completion, strict=True)
    ]


def rl_config(artifacts, run_dir, estimator: str) -> ppo_lib.PPORunConfig:
    """PPO (``estimator="gae"``) or GRPO on 4 devices, a reward model and a text reward."""
    opt = OptimizerConfig(learning_rate=1e-3, schedule="constant", name="sgd")
    group = estimator != "gae"
    ppo = ppo_lib.PPOConfig(
        response_length=6,
        ppo_epochs=2,
        num_minibatches=2,
        reward_norm_prompts=16,
        advantage_estimator=estimator,
        samples_per_prompt=4 if group else 1,
        policy_optimizer=opt,
        critic_optimizer=opt,
    )
    return ppo_lib.PPORunConfig(
        run_dir=str(run_dir),
        policy=ModelSource(artifact=f"{artifacts}/sft", tokenizer=TOKENIZER),
        reward=ModelSource(artifact=f"{artifacts}/rm", tokenizer=TOKENIZER),
        rewards=rewards.RewardsConfig(functions=("rl_testing.first_word_matches",)),
        prompts=PROMPTS,
        prompt_length=8,
        prompts_per_iteration=4 if group else 8,
        iterations=2,
        ppo=ppo,
        mesh=sharding.MeshConfig(data=2, fsdp=2, tensor=1, num_devices=4),
        checkpoint=ckpt_lib.CheckpointConfig(save_every=100, keep=1),
        console=False,
        tensorboard=False,
    )
