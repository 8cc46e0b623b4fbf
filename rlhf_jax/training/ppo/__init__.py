"""PPO against a learned reward model, with a KL penalty to the reference policy and GAE
(Ziegler et al. 2019; Stiennon et al. 2020; Ouyang et al. 2022), and the critic-free RLOO and
GRPO on the same rollouts.

One iteration, one file per concept:

    config.py      PPOConfig (every implementation detail a field), PPOState, Statics
    prompts.py     the prompt set (too-long prompts counted, left out) and its sampler
    experience.py  rollout (sample) → score (log-probs, reference, values, rewards, KL, GAE)
    sampling.py    on the host between them: text reward functions, dynamic sampling
    update.py      epochs × minibatches × micro-batches of the policy/value losses, guarded
    programs.py    the iteration as jitted programs (three, or one fused)
    setup.py       the reward sources, the models and state on the mesh, reward normalisation
    runner.py      PPORunConfig, run_ppo: prompts, the iteration's steps, the shared loop
"""

from rlhf_jax.training.ppo.config import PPOConfig, PPOState, Statics
from rlhf_jax.training.ppo.experience import (
    combined_scores,
    episode_metrics,
    has_eos,
    raw_scores,
    rollout,
    score,
    shape_scores,
)
from rlhf_jax.training.ppo.programs import build_iteration
from rlhf_jax.training.ppo.prompts import EncodedPrompts, PromptSampler, encode_prompt_file
from rlhf_jax.training.ppo.runner import PPORunConfig, run_ppo
from rlhf_jax.training.ppo.setup import fit_reward_normalisation, init_ppo_state, reward_sources
from rlhf_jax.training.ppo.update import optimizers, policy_loss, update, value_loss

__all__ = [
    "EncodedPrompts",
    "PPOConfig",
    "PPORunConfig",
    "PPOState",
    "PromptSampler",
    "Statics",
    "build_iteration",
    "combined_scores",
    "encode_prompt_file",
    "episode_metrics",
    "fit_reward_normalisation",
    "has_eos",
    "init_ppo_state",
    "optimizers",
    "policy_loss",
    "raw_scores",
    "reward_sources",
    "rollout",
    "run_ppo",
    "score",
    "shape_scores",
    "update",
    "value_loss",
]
