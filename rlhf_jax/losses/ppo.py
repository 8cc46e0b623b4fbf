"""PPO's clipped policy and value losses (Schulman et al. 2017), per token, masked.

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
    masked_var,
    sanitize,
    upcast,
)


def ppo_policy_loss(
    logp_BxT,
    old_logp_BxT,
    advantages_BxT,
    mask_BxT,
    *,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    dual_clip: float | None = None,
    aggregation: str = "token_mean",
    norm_constant: float | None = None,
    normalizer=None,
    token_weights_BxT=None,
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """Clipped surrogate objective, as a loss to minimise.

        ρ_t = exp(log π(y_t) − log π_old(y_t))
        l_t = max(−A_t ρ_t, −A_t clip(ρ_t, 1 − ε_low, 1 + ε_high))

    ``clip_eps_high`` (DAPO's "clip-higher", Yu et al. 2025) makes the range asymmetric; it
    defaults to ``clip_eps``. ``dual_clip`` c > 1 (Ye et al. 2020) also bounds the loss of
    negative-advantage tokens at −c·A_t, so a huge ratio cannot blow up the update:
    l_t = min(l_t, −c A_t) where A_t < 0.

    The per-token loss is reduced by ``aggregation`` (see ``aggregate``); ``normalizer``
    overrides its denominator for exact gradient accumulation. ``token_weights_BxT``
    (stop-gradient; e.g. `truncated_importance_weights` of the sampler) multiply the per-token
    loss.

    Returns ``(loss, metrics)``: clipfrac (tokens where the clipped term is active),
    approx_kl (k3 estimate of KL(π_old ‖ π) over valid tokens), ratio mean and max,
    dual_clipfrac when dual clipping is on, and the aggregation's numerator/denominator.
    """
    shape = check_same_shape(
        logp_BxT=logp_BxT, old_logp_BxT=old_logp_BxT, advantages_BxT=advantages_BxT
    )
    if len(shape) != 2:
        raise ValueError(f"logp_BxT must have rank 2 (B, T); got {shape}")
    if clip_eps <= 0:
        raise ValueError(f"clip_eps must be > 0; got {clip_eps}")
    clip_high = clip_eps if clip_eps_high is None else clip_eps_high
    if clip_high <= 0:
        raise ValueError(f"clip_eps_high must be > 0; got {clip_eps_high}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1; got {dual_clip}")
    mask_BxT = as_mask(mask_BxT, shape, "mask_BxT")
    dtype = compute_dtype(logp_BxT, old_logp_BxT, advantages_BxT)
    logp = sanitize(upcast(logp_BxT, dtype), mask_BxT)
    old_logp = sanitize(upcast(old_logp_BxT, dtype), mask_BxT)
    adv = sanitize(upcast(advantages_BxT, dtype), mask_BxT)

    log_ratio = logp - old_logp
    ratio = jnp.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_high)
    loss_BxT = jnp.maximum(unclipped, clipped)
    metrics = {}
    if dual_clip is not None:
        bound = -adv * dual_clip
        dual_active = (adv < 0) & (loss_BxT > bound)
        loss_BxT = jnp.where(dual_active, bound, loss_BxT)
        metrics["dual_clipfrac"] = masked_mean(dual_active.astype(dtype), mask_BxT)
    if token_weights_BxT is not None:
        check_same_shape(logp_BxT=logp_BxT, token_weights_BxT=token_weights_BxT)
        weights = sanitize(upcast(token_weights_BxT, dtype), mask_BxT)
        loss_BxT = jax.lax.stop_gradient(weights) * loss_BxT
    loss, numerator, denominator = aggregate(
        loss_BxT, mask_BxT, mode=aggregation, norm_constant=norm_constant, normalizer=normalizer
    )
    metrics.update(
        clipfrac=masked_mean((clipped > unclipped).astype(dtype), mask_BxT),
        approx_kl=masked_mean(jnp.expm1(log_ratio) - log_ratio, mask_BxT),
        ratio_mean=masked_mean(ratio, mask_BxT),
        ratio_max=jnp.max(sanitize(ratio, mask_BxT)),  # ratios are > 0; 0 if no token
        loss_numerator=numerator,
        loss_denominator=denominator,
    )
    return loss, metrics


def explained_variance(predictions, targets, mask) -> jnp.ndarray:
    """1 − Var[target − prediction] / Var[target] over valid entries (1 is perfect, ≤ 0 useless).

    Zero-variance targets give 0 rather than nan.
    """
    residual_var = masked_var(targets - predictions, mask)
    target_var = masked_var(targets, mask)
    has_var = target_var > 0
    return jnp.where(has_var, 1.0 - residual_var / jnp.where(has_var, target_var, 1), 0)


def value_loss(
    values_BxT,
    old_values_BxT,
    returns_BxT,
    mask_BxT,
    *,
    clip_eps: float | None = None,
    aggregation: str = "token_mean",
    norm_constant: float | None = None,
    normalizer=None,
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """Value regression, optionally clipped around the rollout's values (as in PPO2).

        l_t = ½ (V_t − R_t)²
        clipped: l_t = ½ max((V_t − R_t)², (V_old,t + clip(V_t − V_old,t, −ε, ε) − R_t)²)

    The ½ follows lm-human-preferences and TRL, so ``vf_coef`` values carry over.

    Returns ``(loss, metrics)``: clipfrac (tokens where the clipped term is larger),
    explained_variance of the returns by ``values_BxT``, the mean value, and the
    aggregation's numerator/denominator.
    """
    shape = check_same_shape(
        values_BxT=values_BxT, old_values_BxT=old_values_BxT, returns_BxT=returns_BxT
    )
    if len(shape) != 2:
        raise ValueError(f"values_BxT must have rank 2 (B, T); got {shape}")
    if clip_eps is not None and clip_eps <= 0:
        raise ValueError(f"clip_eps must be > 0 or None; got {clip_eps}")
    mask_BxT = as_mask(mask_BxT, shape, "mask_BxT")
    dtype = compute_dtype(values_BxT, old_values_BxT, returns_BxT)
    values = sanitize(upcast(values_BxT, dtype), mask_BxT)
    old_values = sanitize(upcast(old_values_BxT, dtype), mask_BxT)
    returns = sanitize(upcast(returns_BxT, dtype), mask_BxT)

    unclipped = jnp.square(values - returns)
    if clip_eps is None:
        loss_BxT = 0.5 * unclipped
        clipfrac = jnp.zeros((), dtype)
    else:
        values_clipped = old_values + jnp.clip(values - old_values, -clip_eps, clip_eps)
        clipped = jnp.square(values_clipped - returns)
        loss_BxT = 0.5 * jnp.maximum(unclipped, clipped)
        clipfrac = masked_mean((clipped > unclipped).astype(dtype), mask_BxT)
    loss, numerator, denominator = aggregate(
        loss_BxT, mask_BxT, mode=aggregation, norm_constant=norm_constant, normalizer=normalizer
    )
    metrics = {
        "clipfrac": clipfrac,
        "explained_variance": explained_variance(values, returns, mask_BxT),
        "value_mean": masked_mean(values, mask_BxT),
        "loss_numerator": numerator,
        "loss_denominator": denominator,
    }
    return loss, metrics
