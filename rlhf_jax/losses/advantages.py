"""Advantage estimation: GAE, masked whitening, and group baselines (RLOO, GRPO).

Letters: B batch, T time (response tokens), K samples per prompt.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from rlhf_jax.losses._masking import (
    as_mask,
    check_same_shape,
    compute_dtype,
    masked_mean,
    masked_var,
    sanitize,
    upcast,
)


def gae(
    rewards_BxT, values_BxT, mask_BxT, *, gamma: float, lam: float
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Generalised advantage estimation (Schulman et al. 2016), one reverse ``lax.scan``.

        δ_t = r_t + γ V_{t+1} m_{t+1} − V_t
        A_t = δ_t + γ λ m_{t+1} A_{t+1},     R_t = A_t + V_t

    ``m`` is the mask: rows are right-padded (valid tokens, then padding), so the value after
    the last valid token is 0 — the response ended, nothing is bootstrapped. A 0 inside a row
    ends the episode at that point in the same way. Each row may have its own length.

    Returns ``(advantages_BxT, returns_BxT)``, both 0 under the mask.
    """
    check_same_shape(rewards_BxT=rewards_BxT, values_BxT=values_BxT)
    if jnp.ndim(rewards_BxT) != 2:
        raise ValueError(f"rewards_BxT must have rank 2 (B, T); got {jnp.shape(rewards_BxT)}")
    mask_BxT = as_mask(mask_BxT, jnp.shape(rewards_BxT), "mask_BxT")
    dtype = compute_dtype(rewards_BxT, values_BxT)
    rewards = sanitize(upcast(rewards_BxT, dtype), mask_BxT)
    values = sanitize(upcast(values_BxT, dtype), mask_BxT)
    # Shift by one step: what follows t, with nothing (mask 0) after the last token.
    next_values = jnp.pad(values[:, 1:], ((0, 0), (0, 1)))
    next_mask = jnp.pad(mask_BxT[:, 1:], ((0, 0), (0, 1))).astype(dtype)
    deltas = rewards + gamma * next_values - values  # next_values is already 0 under the mask
    decay = gamma * lam * next_mask

    def step(next_adv_B, xs):
        delta_B, decay_B = xs
        adv_B = delta_B + decay_B * next_adv_B
        return adv_B, adv_B

    _, adv_TxB = jax.lax.scan(
        step, jnp.zeros(rewards.shape[:1], dtype), (deltas.T, decay.T), reverse=True
    )
    advantages = sanitize(adv_TxB.T, mask_BxT)
    return advantages, sanitize(advantages + values, mask_BxT)


def whiten(
    x, mask, *, shift_mean: bool = True, unbiased: bool = False, eps: float = 1e-8
) -> jnp.ndarray:
    """Masked whitening: (x − μ) / sqrt(σ² + ε) over the valid entries, 0 under the mask.

    With ``shift_mean=False`` the mean is added back — only the scale changes — which is how
    lm-human-preferences whitens rewards (a mean shift would change which responses the
    KL-penalised objective prefers). σ² is the biased variance unless ``unbiased``.
    """
    mask = as_mask(mask, jnp.shape(x), "mask")
    dtype = compute_dtype(x)
    x = sanitize(upcast(x, dtype), mask)
    mean = masked_mean(x, mask)
    whitened = (x - mean) * jax.lax.rsqrt(masked_var(x, mask, unbiased=unbiased) + eps)
    if not shift_mean:
        whitened = whitened + mean
    return sanitize(whitened, mask)


def group_advantages(
    scores_BxK,
    *,
    baseline: Literal["mean", "rloo"] = "mean",
    normalize_std: bool = True,
    std_over: Literal["group", "batch"] = "group",
    eps: float = 1e-4,
) -> jnp.ndarray:
    """Advantages from K samples of the same prompt, with no critic.

    mean (GRPO, Shao et al. 2024):   A_k = s_k − mean_j s_j
    rloo (Ahmadian et al. 2024):     A_k = s_k − mean_{j≠k} s_j = K/(K−1) · (s_k − mean_j s_j)
    With ``normalize_std`` the advantages are divided by (std s + ε), the unbiased standard
    deviation of the group as in GRPO (``std_over="group"``) or of the whole batch
    (``"batch"``: batch-level reward scaling, which keeps a low-variance group's advantages
    small; Hu 2025, REINFORCE++; TRL's ``scale_rewards="batch"``); Dr. GRPO (Liu et al. 2025)
    turns it off.

    Returns ``advantages_BxK``.
    """
    if jnp.ndim(scores_BxK) != 2:
        raise ValueError(f"scores_BxK must have rank 2 (B, K); got {jnp.shape(scores_BxK)}")
    num_samples = scores_BxK.shape[1]
    if num_samples < 2:
        raise ValueError(f"group_advantages needs K >= 2 samples per prompt; got K={num_samples}")
    if baseline not in ("mean", "rloo"):
        raise ValueError(f"baseline={baseline!r}; expected 'mean' or 'rloo'")
    if std_over not in ("group", "batch"):
        raise ValueError(f"std_over={std_over!r}; expected 'group' or 'batch'")
    scores = upcast(scores_BxK, compute_dtype(scores_BxK))
    centred = scores - jnp.mean(scores, axis=1, keepdims=True)
    advantages = centred * (num_samples / (num_samples - 1)) if baseline == "rloo" else centred
    if normalize_std:
        if std_over == "group":
            std = jnp.std(scores, axis=1, keepdims=True, ddof=1)
        else:
            std = jnp.std(scores, ddof=1)
        advantages = advantages / (std + eps)
    return advantages
