"""Direct preference optimisation and its relatives: no reward model, no RL loop.

Inputs are per-sequence log-probabilities of the response tokens (``seq_logp_B`` from
``sequence_logprobs``); SimPO and ORPO take length-normalised (average per-token) ones.

Letters: B batch (preference pairs).
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

DPO_LOSS_TYPES: tuple[str, ...] = ("sigmoid", "robust", "hinge", "ipo")


def _prepare(mask, **arrays):
    shape = check_same_shape(**arrays)
    if len(shape) != 1:
        name = next(iter(arrays))
        raise ValueError(f"{name} must have rank 1 (B,); got shape {shape}")
    dtype = compute_dtype(*arrays.values())
    out = [upcast(x, dtype) for x in arrays.values()]
    if mask is not None:
        valid = as_mask(mask, shape, "mask")
        out = [sanitize(x, valid) for x in out]
    return dtype, out


def _preference_metrics(chosen_B, rejected_B, mask, dtype) -> dict[str, jnp.ndarray]:
    return {
        "rewards/chosen": batch_mean(chosen_B, mask),
        "rewards/rejected": batch_mean(rejected_B, mask),
        "rewards/accuracies": batch_mean((chosen_B > rejected_B).astype(dtype), mask),
        "rewards/margins": batch_mean(chosen_B - rejected_B, mask),
    }


def dpo_loss(
    pi_chosen_B,
    pi_rejected_B,
    ref_chosen_B,
    ref_rejected_B,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    label=None,
    mask=None,
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """DPO (Rafailov et al. 2023) and the losses that share its implicit reward.

    With h = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l)):
      sigmoid: −(1−ε) log σ(βh) − ε log σ(−βh)      DPO; ε > 0 is conservative DPO (cDPO,
                                                    Mitchell 2023), labels flipped w.p. ε
      robust:  [−(1−ε) log σ(βh) + ε log σ(−βh)] / (1 − 2ε)
                                                    rDPO (Chowdhury et al. 2024), an unbiased
                                                    loss under label noise ε
      hinge:   max(0, 1 − βh)                       SLiC (Zhao et al. 2023)
      ipo:     (h − 1/(2β))²                        IPO (Azar et al. 2023); minimised at
                                                    h = 1/(2β)
    ``label`` (optional, per pair; sigmoid only) is a soft label q = P(chosen ≻ rejected):
    the sigmoid loss becomes −q' log σ(βh) − (1−q') log σ(−βh), q' = (1−ε) q + ε (1 − q).
    ``mask`` (optional, per pair) drops rows that only pad a static batch.

    Returns ``(loss, metrics)`` with the implicit rewards β(log π − log π_ref) of chosen and
    rejected, their accuracy and margin, and the log-probs — named as TRL names them.
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r}; expected one of {DPO_LOSS_TYPES}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0; got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5); got {label_smoothing}")
    if label_smoothing and loss_type in ("hinge", "ipo"):
        raise ValueError(f"label_smoothing is not defined for loss_type={loss_type!r}")
    if label is not None and loss_type != "sigmoid":
        raise ValueError(
            f"soft labels (chosen_probability) are defined for loss_type='sigmoid' only; got "
            f"{loss_type!r}"
        )
    dtype, (pi_c, pi_r, ref_c, ref_r) = _prepare(
        mask,
        pi_chosen_B=pi_chosen_B,
        pi_rejected_B=pi_rejected_B,
        ref_chosen_B=ref_chosen_B,
        ref_rejected_B=ref_rejected_B,
    )
    h_B = (pi_c - ref_c) - (pi_r - ref_r)
    eps = label_smoothing
    if label is not None:
        q_B = soft_target(label, h_B.shape, dtype, eps)
        if mask is not None:
            q_B = sanitize(q_B, as_mask(mask, h_B.shape, "mask"))
        loss_B = -q_B * jax.nn.log_sigmoid(beta * h_B) - (1 - q_B) * jax.nn.log_sigmoid(-beta * h_B)
    elif loss_type == "sigmoid":
        loss_B = -(1 - eps) * jax.nn.log_sigmoid(beta * h_B)
        if eps:
            loss_B = loss_B - eps * jax.nn.log_sigmoid(-beta * h_B)
    elif loss_type == "robust":
        loss_B = (
            -(1 - eps) * jax.nn.log_sigmoid(beta * h_B) + eps * jax.nn.log_sigmoid(-beta * h_B)
        ) / (1 - 2 * eps)
    elif loss_type == "hinge":
        loss_B = jax.nn.relu(1.0 - beta * h_B)
    else:
        loss_B = jnp.square(h_B - 1.0 / (2.0 * beta))
    metrics = _preference_metrics(beta * (pi_c - ref_c), beta * (pi_r - ref_r), mask, dtype)
    metrics.update(
        {
            "logps/chosen": batch_mean(pi_c, mask),
            "logps/rejected": batch_mean(pi_r, mask),
        }
    )
    return batch_mean(loss_B, mask), metrics


def simpo_loss(
    pi_chosen_avg_B,
    pi_rejected_avg_B,
    *,
    beta: float = 2.0,
    gamma: float = 0.5,
    label_smoothing: float = 0.0,
    mask=None,
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """SimPO (Meng et al. 2024): reference-free, length-normalised, with a target margin γ.

        L = −(1−ε) log σ(β ā_w − β ā_l − γ) − ε log σ(−(β ā_w − β ā_l − γ))

    where ā = (1/|y|) log π(y) is the average per-token log-prob (pass ``seq_logp / length``).
    Returns ``(loss, metrics)``; the implicit rewards are β ā.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0; got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5); got {label_smoothing}")
    dtype, (chosen, rejected) = _prepare(
        mask, pi_chosen_avg_B=pi_chosen_avg_B, pi_rejected_avg_B=pi_rejected_avg_B
    )
    logits_B = beta * (chosen - rejected) - gamma
    loss_B = -(1 - label_smoothing) * jax.nn.log_sigmoid(logits_B)
    if label_smoothing:
        loss_B = loss_B - label_smoothing * jax.nn.log_sigmoid(-logits_B)
    metrics = _preference_metrics(beta * chosen, beta * rejected, mask, dtype)
    return batch_mean(loss_B, mask), metrics


def log1mexp(x) -> jnp.ndarray:
    """log(1 − exp(x)) for x < 0, accurate at both ends (Mächler 2012)."""
    near_zero = x > -jnp.log(2.0)
    # Each branch sees only inputs it is accurate and finite on, so neither feeds a nan
    # gradient through the where.
    x_near = jnp.where(near_zero, x, -1.0)
    x_far = jnp.where(near_zero, -1.0, x)
    return jnp.where(near_zero, jnp.log(-jnp.expm1(x_near)), jnp.log1p(-jnp.exp(x_far)))


def orpo_loss(
    pi_chosen_avg_B,
    pi_rejected_avg_B,
    *,
    beta: float = 0.1,
    chosen_nll=None,
    mask=None,
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """ORPO's odds-ratio term (Hong et al. 2024), from average per-token log-probs ā.

        odds(y) = p / (1 − p),  p = exp(ā)
        L_OR = −log σ(log odds(y_w) − log odds(y_l)),     L = L_SFT + β · L_OR

    The SFT term L_SFT is the chosen response's mean token NLL; pass it as ``chosen_nll`` to
    get the full ORPO loss, or add it yourself. ā must be < 0 (a probability below 1).
    Returns ``(loss, metrics)`` with the log-odds ratio and the implicit rewards β ā.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0; got {beta}")
    dtype, (chosen, rejected) = _prepare(
        mask, pi_chosen_avg_B=pi_chosen_avg_B, pi_rejected_avg_B=pi_rejected_avg_B
    )
    # A masked row is 0 after _prepare; move it off the log1mexp pole at 0.
    if mask is not None:
        valid = as_mask(mask, chosen.shape, "mask")
        chosen = jnp.where(valid, chosen, -1.0)
        rejected = jnp.where(valid, rejected, -1.0)
    log_odds_B = (chosen - log1mexp(chosen)) - (rejected - log1mexp(rejected))
    ratio_loss = batch_mean(-jax.nn.log_sigmoid(log_odds_B), mask)
    loss = beta * ratio_loss
    metrics = _preference_metrics(beta * chosen, beta * rejected, mask, dtype)
    metrics.update(
        {
            "log_odds_ratio": batch_mean(log_odds_B, mask),
            "odds_ratio_loss": ratio_loss,
        }
    )
    if chosen_nll is not None:
        nll = upcast(chosen_nll, dtype)
        loss = loss + nll
        metrics["nll_loss"] = nll
    return loss, metrics
