"""Reward-model losses: Bradley–Terry on pairs and the K-wise ranking loss.

Letters: B batch (prompts), K responses per prompt.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlhf_jax.losses._masking import (
    as_mask,
    batch_mean,
    check_same_shape,
    compute_dtype,
    sanitize,
    soft_target,
    upcast,
)


def bradley_terry_loss(
    chosen_B,
    rejected_B,
    *,
    margin=None,
    label_smoothing: float = 0.0,
    center_coef: float = 0.0,
    label=None,
    mask=None,
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """Bradley–Terry preference loss (Bradley & Terry 1952; Ouyang et al. 2022).

    P(chosen ≻ rejected) = σ(r_c − r_r − m), and with label smoothing ε (the label is taken to
    be wrong with probability ε, as in conservative DPO):

        L = mean_b [ −(1−ε) log σ(Δ_b) − ε log σ(−Δ_b) ] + c · mean_b (r_c + r_r)²,
        Δ_b = r_c − r_r − m_b.

    ``label`` (optional, per pair) is a soft label q_b = P(chosen ≻ rejected), as AI feedback
    gives (Bai et al. 2022): the loss is then the cross-entropy to it,
    −q' log σ(Δ) − (1 − q') log σ(−Δ) with q' = (1−ε) q + ε (1 − q); q = 1 is the hard label.

    ``margin`` (scalar or per pair, e.g. Llama 2's rating-gap margin) demands the chosen
    response win by at least that much. The last term (Eisenstein et al. 2023, "reward
    centering") pulls rewards towards zero mean; it does not change the preference fit.

    ``mask`` (optional, per pair) drops rows that only pad a static batch.
    Returns ``(loss, metrics)`` with accuracy (r_c > r_r strictly), mean margin r_c − r_r and the
    chosen/rejected reward means.
    """
    check_same_shape(chosen_B=chosen_B, rejected_B=rejected_B)
    if jnp.ndim(chosen_B) != 1:
        raise ValueError(f"chosen_B must have rank 1 (B,); got shape {jnp.shape(chosen_B)}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5); got {label_smoothing}")
    dtype = compute_dtype(chosen_B, rejected_B, margin)
    chosen, rejected = upcast(chosen_B, dtype), upcast(rejected_B, dtype)
    if mask is not None:
        valid = as_mask(mask, chosen.shape, "mask")
        chosen, rejected = sanitize(chosen, valid), sanitize(rejected, valid)
    diff_B = chosen - rejected
    delta_B = diff_B if margin is None else diff_B - upcast(margin, dtype)
    if label is None:
        loss_B = -(1.0 - label_smoothing) * jax.nn.log_sigmoid(delta_B)
        if label_smoothing:
            loss_B = loss_B - label_smoothing * jax.nn.log_sigmoid(-delta_B)
    else:
        q_B = soft_target(label, chosen.shape, dtype, label_smoothing)
        if mask is not None:
            q_B = sanitize(q_B, valid)
        loss_B = -q_B * jax.nn.log_sigmoid(delta_B) - (1.0 - q_B) * jax.nn.log_sigmoid(-delta_B)
    if center_coef:
        loss_B = loss_B + center_coef * jnp.square(chosen + rejected)
    metrics = {
        "accuracy": batch_mean((diff_B > 0).astype(dtype), mask),
        "margin": batch_mean(diff_B, mask),
        "chosen_reward": batch_mean(chosen, mask),
        "rejected_reward": batch_mean(rejected, mask),
    }
    return batch_mean(loss_B, mask), metrics


def ranking_loss(rewards_BxK, ranks_BxK, mask_BxK) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """InstructGPT's K-wise ranking loss (Ouyang et al. 2022, eq. 1).

        L = −mean_b [ 1/|P_b| Σ_{(i,j) ∈ P_b} log σ(r_bi − r_bj) ],
        P_b = {(i, j): i, j valid, rank_bi < rank_bj}.

    Rank 0 is the best response; ties (equal ranks) carry no preference and are left out, as
    are responses under ``mask_BxK`` 0 (prompts with fewer than K responses). Each prompt's
    pairs are averaged first, so every prompt weighs the same whatever its number of pairs;
    prompts with no pair drop out of the mean.

    Returns ``(loss, metrics)`` with the pairwise accuracy (mean over prompts) and the number
    of pairs.
    """
    check_same_shape(rewards_BxK=rewards_BxK, ranks_BxK=ranks_BxK)
    if jnp.ndim(rewards_BxK) != 2:
        raise ValueError(f"rewards_BxK must have rank 2 (B, K); got {jnp.shape(rewards_BxK)}")
    mask_BxK = as_mask(mask_BxK, jnp.shape(rewards_BxK), "mask_BxK")
    dtype = compute_dtype(rewards_BxK)
    rewards = sanitize(upcast(rewards_BxK, dtype), mask_BxK)
    ranks = jnp.where(mask_BxK, ranks_BxK, 0)
    # pair (i, j) counts when i is strictly better ranked than j and both are present.
    better_BxKxK = (ranks[:, :, None] < ranks[:, None, :]) & (
        mask_BxK[:, :, None] & mask_BxK[:, None, :]
    )
    diff_BxKxK = rewards[:, :, None] - rewards[:, None, :]
    pair_loss = sanitize(-jax.nn.log_sigmoid(diff_BxKxK), better_BxKxK)
    pair_correct = sanitize((diff_BxKxK > 0).astype(dtype), better_BxKxK)
    pairs_B = jnp.sum(better_BxKxK, axis=(1, 2), dtype=dtype)
    has_pairs_B = pairs_B > 0
    per_prompt_loss_B = jnp.sum(pair_loss, axis=(1, 2)) / jnp.maximum(pairs_B, 1)
    per_prompt_acc_B = jnp.sum(pair_correct, axis=(1, 2)) / jnp.maximum(pairs_B, 1)
    metrics = {
        "accuracy": batch_mean(per_prompt_acc_B, has_pairs_B),
        "num_pairs": jnp.sum(pairs_B),
    }
    return batch_mean(per_prompt_loss_B, has_pairs_B), metrics
