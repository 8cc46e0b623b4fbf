"""RLHF losses: pure, jit-able, differentiable functions of arrays.

    from rlhf_jax import losses
    loss, metrics = losses.bradley_terry_loss(chosen_B, rejected_B)

Conventions shared by every function here:
- Hyperparameters are keyword-only. Inputs may be bf16; the maths runs in float32 (float64
  when the inputs are float64).
- Token-level functions take a mask; nothing under mask 0 changes an output or a gradient,
  not even inf or nan.
- Losses return ``(loss, metrics)``; helpers return plain arrays, as each docstring says.
- Array names carry their shape: B batch, T time, V vocabulary, K responses per prompt.
"""

from rlhf_jax.losses._masking import AGGREGATIONS, aggregate, masked_mean, masked_var
from rlhf_jax.losses.advantages import gae, group_advantages, whiten
from rlhf_jax.losses.dpo import DPO_LOSS_TYPES, dpo_loss, orpo_loss, simpo_loss
from rlhf_jax.losses.kl import (
    KL_ESTIMATORS,
    KLControllerState,
    adaptive_kl_init,
    adaptive_kl_update,
    kl_penalty,
    kl_shaped_rewards,
    last_valid_index,
)
from rlhf_jax.losses.logprobs import entropy_from_logits, sequence_logprobs
from rlhf_jax.losses.ppo import explained_variance, ppo_policy_loss, value_loss
from rlhf_jax.losses.ppo_variants import (
    cispo_policy_loss,
    gspo_policy_loss,
    truncated_importance_weights,
)
from rlhf_jax.losses.reward import bradley_terry_loss, ranking_loss

__all__ = [
    "AGGREGATIONS",
    "DPO_LOSS_TYPES",
    "KL_ESTIMATORS",
    "KLControllerState",
    "adaptive_kl_init",
    "adaptive_kl_update",
    "aggregate",
    "bradley_terry_loss",
    "cispo_policy_loss",
    "dpo_loss",
    "entropy_from_logits",
    "explained_variance",
    "gae",
    "group_advantages",
    "gspo_policy_loss",
    "kl_penalty",
    "kl_shaped_rewards",
    "last_valid_index",
    "masked_mean",
    "masked_var",
    "orpo_loss",
    "ppo_policy_loss",
    "ranking_loss",
    "sequence_logprobs",
    "simpo_loss",
    "truncated_importance_weights",
    "value_loss",
    "whiten",
]
