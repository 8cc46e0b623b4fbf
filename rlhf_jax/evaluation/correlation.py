"""Correlation and trend statistics over samples and over iterations (NumPy, float64).

    pearson(x, y)  = Σ (x − x̄)(y − ȳ) / √(Σ (x − x̄)² · Σ (y − ȳ)²)
    spearman(x, y) = pearson(rank(x), rank(y)), tied values sharing their average rank
    slope(t, y)    = Σ (t − t̄)(y − ȳ) / Σ (t − t̄)²   (least-squares trend of y per unit t)

A correlation with a constant input is undefined and returned as NaN, not 0: "no signal" and
"no relationship" are different findings.
"""

from __future__ import annotations

import math

import numpy as np

from rlhf_jax.evaluation._checks import as_vector, same_length


def _pair(x, y, x_name: str, y_name: str) -> tuple[np.ndarray, np.ndarray]:
    x = as_vector(x, x_name)
    y = as_vector(y, y_name)
    n = same_length(**{x_name: x, y_name: y})
    if n < 2:
        raise ValueError(f"{x_name} and {y_name} need at least 2 values; got {n}")
    return x, y


def _centred_cosine(x: np.ndarray, y: np.ndarray) -> float:
    dx, dy = x - x.mean(), y - y.mean()
    denom = math.sqrt(float(dx @ dx) * float(dy @ dy))
    if denom == 0.0:
        return math.nan
    # Rounding can leave |r| a hair above 1.
    return float(np.clip((dx @ dy) / denom, -1.0, 1.0))


def pearson(x, y) -> float:
    """Pearson correlation of two equal-length 1-D samples; NaN if either is constant."""
    return _centred_cosine(*_pair(x, y, "x", "y"))


def rankdata(x) -> np.ndarray:
    """Ranks 1 … n of a 1-D sample, ties sharing the average of their ranks."""
    x = as_vector(x, "x")
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    # Runs of equal values: each gets the mean of the positions it spans.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    avg = (starts + ends + 1) / 2.0  # mean of ranks starts+1 … ends
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def spearman(x, y) -> float:
    """Spearman rank correlation (average ranks for ties); NaN if either is constant."""
    x, y = _pair(x, y, "x", "y")
    return _centred_cosine(rankdata(x), rankdata(y))


def correlation(x, y, *, method: str = "spearman") -> float:
    """``pearson`` or ``spearman`` by name."""
    if method == "pearson":
        return pearson(x, y)
    if method == "spearman":
        return spearman(x, y)
    raise ValueError(f"method={method!r}; expected 'pearson' or 'spearman'")


def slope(t, y) -> float:
    """Least-squares slope of ``y`` against ``t`` (e.g. KL per iteration); needs 2 distinct t."""
    t, y = _pair(t, y, "t", "y")
    dt = t - t.mean()
    denom = float(dt @ dt)
    if denom == 0.0:
        raise ValueError("t must hold at least 2 distinct values")
    return float(dt @ (y - y.mean())) / denom
