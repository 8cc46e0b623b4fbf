"""The functional forms of reward-model over-optimisation (Gao, Schulman & Hilton 2022,
"Scaling Laws for Reward Model Overoptimization", eqs. 2 and 3), fitted by least squares.

With d = √KL(π ‖ π_init) (nats) and R(d) the gold reward *gained* over the initial policy
(R(0) = 0: pass gold − gold of π_init),

    best-of-n:  R_bon(d) = d (α_bon − β_bon d)
    RL:         R_rl(d)  = d (α_rl − β_rl log d)

Both are linear in (α, β), so the least-squares fit is exact linear algebra (no iterative
optimiser, no starting point): regress R on the columns [d, −d²] (best-of-n) or [d, −d log d]
(RL; d log d → 0 at d = 0), with no intercept. The gold peak, where dR/dd = 0 for β > 0:

    best-of-n:  d* = α / (2β),       R(d*) = α² / (4β)      (d* = 0, R = 0 when α ≤ 0:
                                                            gold only falls)
    RL:         d* = exp(α/β − 1),   R(d*) = β d*

and no peak (the reward still rising) when β ≤ 0. Letters: P points.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np

Form = Literal["bon", "rl"]
FORMS: tuple[str, ...] = ("bon", "rl")


@dataclasses.dataclass(frozen=True)
class GaoFit:
    """One fitted curve: its form, α, β, goodness of fit and the gold peak."""

    form: str  # "bon" or "rl"
    alpha: float
    beta: float
    r2: float  # 1 − SS_res / SS_tot over the points (1.0 for an exact fit)
    num_points: int
    peak_d: float | None  # d* (None: β ≤ 0, no peak)
    peak_reward: float | None  # R(d*)

    def __call__(self, d) -> np.ndarray:
        return gao_curve(d, alpha=self.alpha, beta=self.beta, form=self.form)


def _columns(d_P: np.ndarray, form: str) -> np.ndarray:
    if form == "bon":
        second = d_P**2
    elif form == "rl":
        safe = np.where(d_P > 0, d_P, 1.0)
        second = np.where(d_P > 0, d_P * np.log(safe), 0.0)
    else:
        raise ValueError(f"form={form!r}; expected one of {FORMS}")
    return np.stack([d_P, -second], axis=1)


def gao_curve(d, *, alpha: float, beta: float, form: Form) -> np.ndarray:
    """R(d) of the given form, float64, elementwise over ``d`` (d ≥ 0)."""
    d_P = np.asarray(d, np.float64)
    if np.any(d_P < 0) or not np.all(np.isfinite(d_P)):
        raise ValueError("d must be finite and ≥ 0 (d = √KL)")
    flat = _columns(d_P.reshape(-1), form) @ np.array([alpha, beta])
    return flat.reshape(d_P.shape)


def _peak(alpha: float, beta: float, form: str) -> tuple[float | None, float | None]:
    if not beta > 0:
        return None, None
    if form == "bon":
        if alpha <= 0:  # the parabola's top lies at d ≤ 0: on d ≥ 0 gold only falls
            return 0.0, 0.0
        return alpha / (2 * beta), alpha**2 / (4 * beta)
    d = math.exp(alpha / beta - 1)
    return d, beta * d


def fit_gao(d, reward, *, form: Form) -> GaoFit:
    """Least-squares α, β of ``form`` through the points (d_P, reward_P).

    ``reward`` is the gold reward gained over the initial policy; ``d`` = √KL ≥ 0. Raises a
    ValueError naming the problem for mismatched, non-finite or negative inputs, or points
    that cannot determine two parameters (fewer than two distinct d > 0).
    """
    d_P = np.asarray(d, np.float64).reshape(-1)
    r_P = np.asarray(reward, np.float64).reshape(-1)
    if d_P.shape != r_P.shape:
        raise ValueError(f"d has {d_P.size} points but reward has {r_P.size}")
    for name, x in (("d", d_P), ("reward", r_P)):
        bad = np.flatnonzero(~np.isfinite(x))
        if bad.size:
            raise ValueError(f"{name}[{int(bad[0])}] is not finite ({x[bad[0]]})")
    if np.any(d_P < 0):
        raise ValueError(f"d[{int(np.argmax(d_P < 0))}] < 0; d is √KL")
    if np.unique(d_P[d_P > 0]).size < 2:
        raise ValueError("fitting α and β needs points at two or more distinct d > 0")
    x_Px2 = _columns(d_P, form)
    (alpha, beta), *_ = np.linalg.lstsq(x_Px2, r_P, rcond=None)
    residual = r_P - x_Px2 @ np.array([alpha, beta])
    ss_res = float(residual @ residual)
    ss_tot = float(np.sum((r_P - r_P.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)
    peak_d, peak_reward = _peak(float(alpha), float(beta), form)
    return GaoFit(form, float(alpha), float(beta), r2, int(d_P.size), peak_d, peak_reward)
