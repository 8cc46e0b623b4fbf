"""KL to the reference policy: per-token estimators, KL-shaped rewards, and the KL controller.

Letters: B batch, T time (response tokens).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax.numpy as jnp

from rlhf_jax.losses._masking import (
    as_mask,
    check_same_shape,
    compute_dtype,
    sanitize,
    upcast,
)

KLEstimator = Literal["k1", "k2", "k3", "abs"]
KL_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3", "abs")


def kl_penalty(logp_BxT, ref_logp_BxT, *, estimator: str = "k1", mask_BxT=None) -> jnp.ndarray:
    """Per-token estimate of KL(π ‖ π_ref) from tokens sampled from π (Schulman 2020).

    With log-ratio ℓ = log π(y_t) − log π_ref(y_t) and ρ = π_ref/π = exp(−ℓ):
      k1:  ℓ                 (unbiased, high variance, can be negative)
      k2:  ½ ℓ²              (biased, low variance)
      k3:  ρ − 1 − log ρ     (unbiased, always ≥ 0)
      abs: |ℓ|
    ``mask_BxT`` (optional) zeros padded positions without letting their values leak.
    Returns ``kl_BxT``.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"estimator={estimator!r}; expected one of {KL_ESTIMATORS}")
    shape = check_same_shape(logp_BxT=logp_BxT, ref_logp_BxT=ref_logp_BxT)
    dtype = compute_dtype(logp_BxT, ref_logp_BxT)
    log_ratio = upcast(logp_BxT, dtype) - upcast(ref_logp_BxT, dtype)
    if mask_BxT is not None:
        mask_BxT = as_mask(mask_BxT, shape, "mask_BxT")
        log_ratio = jnp.where(mask_BxT, log_ratio, 0)
    if estimator == "k1":
        kl = log_ratio
    elif estimator == "k2":
        kl = 0.5 * jnp.square(log_ratio)
    elif estimator == "k3":
        kl = jnp.expm1(-log_ratio) + log_ratio
    else:
        kl = jnp.abs(log_ratio)
    return kl if mask_BxT is None else sanitize(kl, mask_BxT)


def last_valid_index(mask_BxT) -> jnp.ndarray:
    """Index of each row's last valid token (0 for a row with none)."""
    positions = jnp.broadcast_to(jnp.arange(mask_BxT.shape[-1]), mask_BxT.shape)
    return jnp.max(jnp.where(mask_BxT, positions, 0), axis=-1)


def kl_shaped_rewards(
    scores_B,
    logp_BxT,
    ref_logp_BxT,
    mask_BxT,
    *,
    kl_coef,
    estimator: str = "k1",
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Per-token RLHF reward (Ziegler et al. 2019; Stiennon et al. 2020).

        r_t = −β · KL_t + [t = last valid token] · score

    The score goes on the last valid token of each row, never on a padding position; a row
    with no valid token gets nothing. ``kl_coef`` β may be a traced scalar (adaptive control).
    Returns ``(rewards_BxT, kl_BxT)``, both 0 under the mask.
    """
    shape = check_same_shape(logp_BxT=logp_BxT, ref_logp_BxT=ref_logp_BxT)
    if jnp.shape(scores_B) != shape[:1]:
        raise ValueError(f"scores_B has shape {jnp.shape(scores_B)}; expected {shape[:1]}")
    mask_BxT = as_mask(mask_BxT, shape, "mask_BxT")
    dtype = compute_dtype(scores_B, logp_BxT, ref_logp_BxT)
    kl_BxT = kl_penalty(
        upcast(logp_BxT, dtype),
        upcast(ref_logp_BxT, dtype),
        estimator=estimator,
        mask_BxT=mask_BxT,
    )
    is_last_BxT = (jnp.arange(shape[1])[None, :] == last_valid_index(mask_BxT)[:, None]) & mask_BxT
    scores = upcast(scores_B, dtype)[:, None]
    rewards_BxT = -jnp.asarray(kl_coef, dtype) * kl_BxT + jnp.where(is_last_BxT, scores, 0)
    return rewards_BxT, kl_BxT


class KLControllerState(NamedTuple):
    """State of the KL coefficient controller; a pytree, so it lives inside jitted state.

    ``target`` None means a fixed coefficient.
    """

    coef: jnp.ndarray
    target: jnp.ndarray | None
    horizon: jnp.ndarray


def adaptive_kl_init(
    *, init_coef: float, target: float | None = None, horizon: float = 10000
) -> KLControllerState:
    """Starts a KL controller; ``target=None`` gives a fixed coefficient."""
    if init_coef < 0:
        raise ValueError(f"init_coef must be >= 0; got {init_coef}")
    if target is not None and target <= 0:
        raise ValueError(f"target must be > 0 or None; got {target}")
    if horizon <= 0:
        raise ValueError(f"horizon must be > 0; got {horizon}")
    return KLControllerState(
        coef=jnp.asarray(init_coef, jnp.float32),
        target=None if target is None else jnp.asarray(target, jnp.float32),
        horizon=jnp.asarray(horizon, jnp.float32),
    )


def adaptive_kl_update(state: KLControllerState, kl, n_steps) -> KLControllerState:
    """Ziegler et al. (2019) proportional controller, as a pure state update.

        e = clip(KL / KL_target − 1, −0.2, 0.2),     β ← β · (1 + e · n_steps / horizon)

    ``kl`` is the measured mean KL of the batch, ``n_steps`` the number of episodes it covered.
    A fixed controller (target None) returns the state unchanged.
    """
    if state.target is None:
        return state
    error = jnp.clip(jnp.asarray(kl, jnp.float32) / state.target - 1.0, -0.2, 0.2)
    multiplier = 1.0 + error * jnp.asarray(n_steps, jnp.float32) / state.horizon
    return state._replace(coef=state.coef * multiplier)
