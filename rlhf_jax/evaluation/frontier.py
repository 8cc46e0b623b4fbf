"""The KL–reward frontier: how much reward a policy buys per nat of KL from the reference.

Every RLHF method trades distance from the reference policy for reward; comparing methods at
equal KL is the fair comparison (Gao et al. 2022, "Scaling Laws for Reward Model
Overoptimization"; Stiennon et al. 2020). Points come from PPO iterations, final DPO policies,
best-of-n (whose KL is analytic, see ``best_of_n.bon_kl``) and the reference itself (KL 0).

A point dominates another if its KL is no larger and its reward no smaller, one of them
strictly. The Pareto frontier is the set of points nothing dominates, ordered by KL: along it
reward rises strictly with KL. ``reward_at_kl`` reads one run's frontier at a KL budget, for
comparing runs that stopped at different KLs.

Letters: P points.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from rlhf_jax.evaluation._checks import as_vector, same_length
from rlhf_jax.evaluation.history import DEFAULT_KEYS, HistoryKeys, column, iterations


@dataclasses.dataclass(frozen=True)
class FrontierPoint:
    """One policy placed on the KL–reward plane."""

    kl: float  # KL(π ‖ π_ref) per response, nats
    gold: float  # mean gold reward r* (NaN where no gold reward exists)
    proxy: float  # mean reward-model score (NaN where not measured)
    run: str = ""  # which run or method the point belongs to
    iteration: int | None = None  # training iteration, None for a final or analytic point
    kind: str = "policy"  # "policy", "best_of_n", "reference", ...

    def reward(self, which: str) -> float:
        if which not in ("gold", "proxy"):
            raise ValueError(f"reward={which!r}; expected 'gold' or 'proxy'")
        return self.gold if which == "gold" else self.proxy


def points_from_history(
    history: Sequence[Mapping],
    *,
    run: str,
    keys: HistoryKeys = DEFAULT_KEYS,
    kind: str = "policy",
) -> list[FrontierPoint]:
    """One point per iteration of a run's history; rows without a finite KL are skipped."""
    kl = column(history, keys.kl)
    gold = column(history, keys.gold)
    proxy = column(history, keys.proxy)
    its = iterations(history, keys)
    return [
        FrontierPoint(float(kl[i]), float(gold[i]), float(proxy[i]), run, int(its[i]), kind)
        for i in range(len(history))
        if math.isfinite(kl[i])
    ]


def collect_points(
    runs: Mapping[str, Sequence[Mapping]], *, keys: HistoryKeys = DEFAULT_KEYS
) -> list[FrontierPoint]:
    """Points from several runs' histories, keyed by run name."""
    return [
        p
        for name, history in runs.items()
        for p in points_from_history(history, run=name, keys=keys)
    ]


def pareto_frontier(kl_P, reward_P) -> np.ndarray:
    """Indices of the non-dominated points (low KL, high reward), in increasing KL.

    Of exact duplicates the first is kept. Inputs are 1-D, the same length, non-empty, finite.
    """
    kl = as_vector(kl_P, "kl_P")
    reward = as_vector(reward_P, "reward_P")
    same_length(kl_P=kl, reward_P=reward)
    # Sweep in increasing KL (higher reward first at equal KL, then index): a point is on the
    # frontier exactly when it beats the best reward of every point at no greater KL.
    order = np.lexsort((np.arange(len(kl)), -reward, kl))
    keep, best = [], -np.inf
    for i in order:
        if reward[i] > best:
            keep.append(int(i))
            best = reward[i]
    return np.asarray(keep, dtype=np.int64)


def frontier(points: Iterable[FrontierPoint], *, reward: str = "gold") -> list[FrontierPoint]:
    """The Pareto-optimal points by ``reward`` ("gold" or "proxy"), in increasing KL.

    Points without a finite KL and reward are skipped.
    """
    usable = [p for p in points if math.isfinite(p.kl) and math.isfinite(p.reward(reward))]
    if not usable:
        return []
    idx = pareto_frontier([p.kl for p in usable], [p.reward(reward) for p in usable])
    return [usable[i] for i in idx]


def reward_at_kl(kl_P, reward_P, kl: float) -> float:
    """The most reward a run reached within a KL budget: its KL–reward frontier read at ``kl``,
    max{ reward_i : KL_i ≤ kl }, NaN when no point is within ``kl``. A run whose KL plateaus
    while its reward still rises is read at its best point below the budget, not where its KL
    first crossed it. Per-iteration points are noisy: pass `history.window_means` of both.
    """
    kls = as_vector(kl_P, "kl_P")
    rewards = as_vector(reward_P, "reward_P")
    same_length(kl_P=kls, reward_P=rewards)
    if not math.isfinite(kl):
        raise ValueError(f"kl={kl}; expected a finite number")
    within = kls <= kl
    return float(rewards[within].max()) if within.any() else math.nan
