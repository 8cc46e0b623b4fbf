"""Win rate of policy A against policy B, judged per prompt, with a Wilson score interval.

For each prompt i a judge (the gold reward r*, or a reward model) scores A's response a_i and
B's response b_i. Prompt i is a win for A if a_i − b_i > m, a loss if b_i − a_i > m, and a tie
otherwise (m = ``tie_margin``). Ties count half:

    rate = (wins + ½ ties) / n

The 95% interval is the Wilson score interval (Wilson 1927) for a proportion p̂ over n trials,
with z the normal quantile:

    centre = (p̂ + z²/2n) / (1 + z²/n)
    half   = z / (1 + z²/n) · √(p̂(1 − p̂)/n + z²/4n²)

Why Wilson rather than the normal (Wald) interval or a bootstrap: it is closed-form and
deterministic (no seed to report), it stays inside [0, 1], and unlike Wald it does not collapse
to zero width when every prompt is a win — the case a good RLHF run produces — while its
coverage is close to nominal already at tens of prompts (Brown, Cai & DasGupta 2001). With ties
each prompt scores 0, ½ or 1, whose variance is at most p(1 − p) for a given mean p, so treating
the counts as Bernoulli makes the interval conservative, never too narrow.
"""

from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist

import numpy as np

from rlhf_jax.evaluation._checks import as_vector, same_length


@dataclasses.dataclass(frozen=True)
class WinRate:
    """A's win rate over B with its confidence interval (ties count half)."""

    rate: float  # (wins + ties/2) / n
    ci_low: float  # lower end of the Wilson interval
    ci_high: float  # upper end of the Wilson interval
    wins: int  # prompts where A beat B by more than tie_margin
    losses: int  # prompts where B beat A by more than tie_margin
    ties: int  # prompts within tie_margin
    n: int  # prompts judged
    confidence: float = 0.95  # coverage of [ci_low, ci_high]

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        pct = round(100 * self.confidence)
        return (
            f"{self.rate:.3f} [{pct}% CI {self.ci_low:.3f}, {self.ci_high:.3f}] "
            f"({self.wins}W/{self.ties}T/{self.losses}L of {self.n})"
        )


def wilson_interval(p_hat: float, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval ``(low, high)`` for a proportion ``p_hat`` observed over ``n``."""
    if n < 1:
        raise ValueError(f"n must be ≥ 1; got {n}")
    if not 0.0 <= p_hat <= 1.0:
        raise ValueError(f"p_hat must be in [0, 1]; got {p_hat}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    return _wilson_low(p_hat, n, z), 1.0 - _wilson_low(1.0 - p_hat, n, z)


def _wilson_low(p_hat: float, n: int, z: float) -> float:
    # The endpoints are the roots of (1 + z²/n)π² − (2p̂ + z²/n)π + p̂² = 0, so
    # low = p̂² / ((1 + z²/n) · high): no cancellation, and exactly 0 at p̂ = 0 (the textbook
    # centre − half leaves rounding residue there). The upper end is 1 − low(1 − p̂).
    z2n = z * z / n
    high = (p_hat + z2n / 2 + z * math.sqrt(p_hat * (1 - p_hat) / n + z2n / (4 * n))) / (1 + z2n)
    return p_hat * p_hat / ((1 + z2n) * high)


def win_rate(scores_a, scores_b, *, tie_margin: float = 0.0, confidence: float = 0.95) -> WinRate:
    """Win rate of A over B from per-prompt judge scores ``scores_a[i]``, ``scores_b[i]``.

    Both are 1-D, the same length, finite; higher is better. ``tie_margin`` ≥ 0 counts
    differences of at most that size as ties (a judge's resolution or noise level).
    """
    a = as_vector(scores_a, "scores_a")
    b = as_vector(scores_b, "scores_b")
    n = same_length(scores_a=a, scores_b=b)
    if not (tie_margin >= 0 and math.isfinite(tie_margin)):
        raise ValueError(f"tie_margin must be a finite number ≥ 0; got {tie_margin!r}")
    diff = a - b
    wins = int(np.sum(diff > tie_margin))
    losses = int(np.sum(diff < -tie_margin))
    ties = n - wins - losses
    rate = (wins + 0.5 * ties) / n
    low, high = wilson_interval(rate, n, confidence=confidence)
    return WinRate(rate, low, high, wins, losses, ties, n, confidence)
