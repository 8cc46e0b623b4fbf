"""Policy-gradient objectives beside PPO's clipped surrogate: GSPO (sequence-level ratios) and
CISPO (clipped importance weights, every token kept), and the off-policy token weights.

Letters: B batch, T time (response tokens).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlhf_jax.losses._masking import (
    aggregate,
    as_mask,
    check_same_shape,
    compute_dtype,
    masked_mean,
    sanitize,
    upcast,
)


def _prepare(logp_BxT, old_logp_BxT, advantages_BxT, mask_BxT, weights_BxT):
    shape = check_same_shape(
        logp_BxT=logp_BxT, old_logp_BxT=old_logp_BxT, advantages_BxT=advantages_BxT
    )
    if len(shape) != 2:
        raise ValueError(f"logp_BxT must have rank 2 (B, T); got {shape}")
    mask = as_mask(mask_BxT, shape, "mask_BxT")
    dtype = compute_dtype(logp_BxT, old_logp_BxT, advantages_BxT)
    cast = lambda x: sanitize(upcast(x, dtype), mask)
    if weights_BxT is None:
        weights = jnp.ones(shape, dtype)
    else:
        check_same_shape(logp_BxT=logp_BxT, token_weights_BxT=weights_BxT)
        weights = jax.lax.stop_gradient(cast(weights_BxT))
    return mask, dtype, cast(logp_BxT), cast(old_logp_BxT), cast(advantages_BxT), weights


def _clip_range(clip_eps, clip_eps_high):
    high = clip_eps if clip_eps_high is None else clip_eps_high
    if clip_eps <= 0 or high <= 0:
        raise ValueError(f"clip_eps and clip_eps_high must be > 0; got {clip_eps}, {high}")
    return 1.0 - clip_eps, 1.0 + high


def gspo_policy_loss(
    logp_BxT,
    old_logp_BxT,
    advantages_BxT,
    mask_BxT,
    *,
    clip_eps: float = 3e-4,
    clip_eps_high: float | None = 4e-4,
    token_level: bool = False,
    aggregation: str = "seq_mean_token_mean",
    norm_constant: float | None = None,
    token_weights_BxT=None,
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """Group Sequence Policy Optimization (Zheng et al. 2025, arXiv:2507.18071).

    The importance ratio is the sequence's, length-normalised:

        s_i = exp( (1/|y_i|) Σ_t (log π(y_t) − log π_old(y_t)) )
        GSPO:        l_i = max(−A_i s_i, −A_i clip(s_i, 1 − ε_low, 1 + ε_high)),  loss = mean_i l_i
        GSPO-token:  s_{i,t} = sg[s_i] · π(y_t) / sg[π(y_t)]  (value s_i, per-token gradient),
                     l_{i,t} = max(−A_{i,t} s_{i,t}, −A_{i,t} clip(s_{i,t})),  reduced by
                     ``aggregation`` (the paper's: the mean over sequences of token means)

    A_i is the sequence's mean advantage over its tokens (GRPO's advantages are constant over a
    sequence). The paper's clip range is tiny (ε_low 3e-4, ε_high 4e-4) because s_i is a
    geometric mean. ``token_weights_BxT`` (stop-gradient, e.g. truncated importance weights of
    the sampler) multiply GSPO-token's per-token loss; the sequence-level form takes none.
    Returns ``(loss, metrics)`` with clipfrac (sequences, or tokens, where the clip is active),
    approx_kl, the ratio's mean and max, and the reduction's numerator/denominator.
    """
    mask, dtype, logp, old, adv, weights = _prepare(
        logp_BxT, old_logp_BxT, advantages_BxT, mask_BxT, token_weights_BxT
    )
    low, high = _clip_range(clip_eps, clip_eps_high)
    log_ratio = logp - old
    tokens_B = jnp.sum(mask, axis=-1, dtype=dtype)
    valid_B = tokens_B > 0
    seq_log_ratio_B = jnp.sum(log_ratio, axis=-1) / jnp.maximum(tokens_B, 1)
    approx_kl = masked_mean(jnp.expm1(log_ratio) - log_ratio, mask)
    if token_level:
        sg = jax.lax.stop_gradient
        ratio = jnp.exp(sg(seq_log_ratio_B)[:, None] + logp - sg(logp))
        clipped = -adv * jnp.clip(ratio, low, high)
        loss_BxT = weights * jnp.maximum(-adv * ratio, clipped)
        loss, numerator, denominator = aggregate(
            loss_BxT, mask, mode=aggregation, norm_constant=norm_constant
        )
        clipfrac = masked_mean((clipped > -adv * ratio).astype(dtype), mask)
        ratio_B = jnp.exp(seq_log_ratio_B)
    else:
        if token_weights_BxT is not None:
            raise ValueError("sequence-level GSPO takes no token_weights_BxT; use token_level")
        ratio_B = jnp.exp(seq_log_ratio_B)
        adv_B = jnp.sum(adv, axis=-1) / jnp.maximum(tokens_B, 1)
        clipped_B = -adv_B * jnp.clip(ratio_B, low, high)
        loss_B = jnp.maximum(-adv_B * ratio_B, clipped_B)
        numerator = jnp.sum(jnp.where(valid_B, loss_B, 0.0))
        denominator = jnp.sum(valid_B, dtype=dtype)
        loss = numerator / jnp.maximum(denominator, 1)
        clipfrac = masked_mean((clipped_B > -adv_B * ratio_B).astype(dtype), valid_B)
    metrics = {
        "clipfrac": clipfrac,
        "approx_kl": approx_kl,
        "ratio_mean": masked_mean(ratio_B, valid_B),
        "ratio_max": jnp.max(jnp.where(valid_B, ratio_B, 0.0)),
        "loss_numerator": numerator,
        "loss_denominator": denominator,
    }
    return loss, metrics


def cispo_policy_loss(
    logp_BxT,
    old_logp_BxT,
    advantages_BxT,
    mask_BxT,
    *,
    clip_eps: float = 1.0,
    clip_eps_high: float | None = 0.28,
    aggregation: str = "token_mean",
    norm_constant: float | None = None,
    token_weights_BxT=None,
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """Clipped IS-weight Policy Optimization (MiniMax-M1, arXiv:2506.13585).

        r_t = π(y_t) / π_old(y_t),   l_t = −sg[clip(r_t, 1 − ε_low, 1 + ε_high)] · A_t · log π(y_t)

    Unlike PPO's clipped surrogate, no token's gradient is dropped: the clip bounds the
    (stop-gradient) importance weight instead. MiniMax-M1 clips from above only: the default
    ε_low = 1 leaves the weight unbounded below (it cannot go below 0). The loss value is a
    weighted log-likelihood, not comparable with PPO's. ``token_weights_BxT`` (stop-gradient)
    multiply the per-token loss. Returns ``(loss, metrics)`` like `ppo_policy_loss`.
    """
    mask, dtype, logp, old, adv, weights = _prepare(
        logp_BxT, old_logp_BxT, advantages_BxT, mask_BxT, token_weights_BxT
    )
    low, high = _clip_range(clip_eps, clip_eps_high)
    log_ratio = logp - old
    ratio = jnp.exp(log_ratio)
    clipped_ratio = jax.lax.stop_gradient(jnp.clip(ratio, low, high))
    loss_BxT = -weights * clipped_ratio * adv * logp
    loss, numerator, denominator = aggregate(
        loss_BxT, mask, mode=aggregation, norm_constant=norm_constant
    )
    metrics = {
        "clipfrac": masked_mean(((ratio < low) | (ratio > high)).astype(dtype), mask),
        "approx_kl": masked_mean(jnp.expm1(log_ratio) - log_ratio, mask),
        "ratio_mean": masked_mean(ratio, mask),
        "ratio_max": jnp.max(sanitize(ratio, mask)),
        "loss_numerator": numerator,
        "loss_denominator": denominator,
    }
    return loss, metrics


def truncated_importance_weights(old_logp_BxT, sample_logp_BxT, mask_BxT, *, cap: float):
    """Per-token off-policy correction min(π_old / π_sampler, C), stop-gradient (truncated
    importance sampling; Yao et al. 2025, "Your efficient RL framework secretly brings you
    off-policy RL training"): the sampler's log-probs may differ from the trainer's."""
    if cap <= 0:
        raise ValueError(f"cap must be > 0; got {cap}")
    shape = check_same_shape(old_logp_BxT=old_logp_BxT, sample_logp_BxT=sample_logp_BxT)
    mask = as_mask(mask_BxT, shape, "mask_BxT")
    dtype = compute_dtype(old_logp_BxT, sample_logp_BxT)
    diff = sanitize(upcast(old_logp_BxT, dtype) - upcast(sample_logp_BxT, dtype), mask)
    return jax.lax.stop_gradient(sanitize(jnp.minimum(jnp.exp(diff), cap), mask))
