"""Soft preference labels from a feedback model's option probabilities (RL-CAI / RLAIF).

For a pair (a, b) the judge is asked, under principle k and with the responses in order o
(o = 0: a is option A; o = 1: b is option A), to answer with option A or B. Its label is the
normalised probability of the two option strings,

    P_k,o(A) = exp ℓ_A / (exp ℓ_A + exp ℓ_B) = σ(ℓ_A − ℓ_B)      ℓ = the options' log-probs,

turned into the probability that a is better, p_k,0 = P_k,0(A) and p_k,1 = 1 − P_k,1(A). With
chain-of-thought each is first clamped to [lo, hi] (Bai et al. 2022 use [0.4, 0.6]: reasoning
makes the judge overconfident). The label is the mean over both orders (position debiasing,
Lee et al. 2023) and over the K principles drawn for the pair (Bai et al.'s ensembling):

    p(a ≻ b) = 1/K Σ_k ½ (p_k,0 + p_k,1).

Agreement, reported with every label set: between orders, the share of (pair, principle) whose
two orders pick the same response; between principles, the share of pairs whose principles
(order-averaged) all pick the same response; the position bias is mean P(A) − ½.

Letters: N pairs, K principles per pair, O = 2 orders.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def option_probability(logp_first, logp_second) -> np.ndarray:
    """σ(ℓ_A − ℓ_B): the first option's probability, normalised over the two, float64."""
    d = np.asarray(logp_first, np.float64) - np.asarray(logp_second, np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * d))  # σ without overflow


def a_better(p_first_NxKxO, *, clamp: tuple[float, float] | None = None) -> np.ndarray:
    """P(a ≻ b) per pair, principle and order (N, K, O) from P(option A) in each order; the
    second order shows b as option A. ``clamp`` = (lo, hi) clips each probability (CoT)."""
    p = np.asarray(p_first_NxKxO, np.float64)
    if p.ndim != 3 or p.shape[-1] not in (1, 2):
        raise ValueError(f"expected P(A) of shape (N, K, 1 or 2 orders); got {p.shape}")
    out = p.copy()
    if p.shape[-1] == 2:
        out[..., 1] = 1.0 - p[..., 1]
    if clamp is not None:
        lo, hi = clamp
        if not 0.0 <= lo <= 0.5 <= hi <= 1.0:
            raise ValueError(f"clamp={clamp}; expected 0 <= lo <= 0.5 <= hi <= 1")
        out = np.clip(out, lo, hi)
    return out


def soft_labels(p_first_NxKxO, *, clamp: tuple[float, float] | None = None) -> np.ndarray:
    """p(a ≻ b) (N,): the mean over orders and principles of `a_better` (module doc)."""
    return a_better(p_first_NxKxO, clamp=clamp).mean(axis=(1, 2))


def agreement(p_first_NxKxO) -> dict:
    """How consistent the judge is (module doc): "order_agreement" (nan with one order),
    "principle_agreement" (nan with one principle), "position_bias"."""
    p = np.asarray(p_first_NxKxO, np.float64)
    better = a_better(p)
    out = {"position_bias": float(np.mean(p) - 0.5)}
    if p.shape[-1] == 2:
        out["order_agreement"] = float(np.mean((better[..., 0] > 0.5) == (better[..., 1] > 0.5)))
    else:
        out["order_agreement"] = float("nan")
    if p.shape[1] > 1:
        pick = better.mean(axis=-1) > 0.5  # (N, K)
        out["principle_agreement"] = float(np.mean(pick.all(axis=1) | (~pick).all(axis=1)))
    else:
        out["principle_agreement"] = float("nan")
    return out


def preference_rows(
    prompts: Sequence[str],
    responses_a: Sequence[str],
    responses_b: Sequence[str],
    p_a: np.ndarray,
) -> list[dict]:
    """Rows {"prompt", "chosen", "rejected", "chosen_probability"}: the response the label
    favours is chosen (a when p = ½), its probability the soft label (>= ½)."""
    rows = []
    for prompt, a, b, p in zip(prompts, responses_a, responses_b, p_a, strict=True):
        first = p >= 0.5
        rows.append(
            {
                "prompt": prompt,
                "chosen": a if first else b,
                "rejected": b if first else a,
                "chosen_probability": float(p if first else 1.0 - p),
            }
        )
    return rows
