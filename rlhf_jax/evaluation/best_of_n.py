"""Best-of-n sampling against a reward model: the baseline every RLHF paper compares to.

For each prompt draw n responses from the policy, keep the one the proxy (reward model) scores
highest, and judge it by the gold reward. Its KL from the sampling policy is known in closed
form (Stiennon et al. 2020, appendix; Gao et al. 2022, eq. 1):

    KL_bon(n) = log n − (n − 1)/n

so best-of-n points go on the same KL–reward plot as PPO iterations. (It is an upper bound on
the true KL, tight when no single response carries much probability; Beirami et al. 2024.)

Estimating best-of-n for every n ≤ N from one set of N samples per prompt (Nakano et al. 2021,
WebGPT appendix; Gao et al. 2022): rank the N samples by proxy, r = 1 … N from worst to best;
the sample of rank r is the best of a uniformly random n-subset with probability

    w_r = C(r − 1, n − 1) / C(N, n)

and E[gold of best-of-n] = Σ_r w_r · gold_(r), unbiased and without resampling noise.

Letters: B prompts, N samples per prompt.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from rlhf_jax.evaluation._checks import as_matrix, positive_int
from rlhf_jax.evaluation.frontier import FrontierPoint


def bon_kl(n):
    """KL_bon(n) = log n − (n − 1)/n in nats, for an int n ≥ 1 or an array of them."""
    arr = np.asarray(n)
    if arr.size == 0:
        raise ValueError("n is empty")
    if arr.dtype == bool or not np.all(np.mod(arr, 1) == 0) or np.any(arr < 1):
        raise ValueError(f"n must be integers ≥ 1; got {n!r}")
    nf = arr.astype(np.float64)
    kl = np.log(nf) - (nf - 1) / nf
    return float(kl) if kl.ndim == 0 else kl


def _first_n(x_BxN: np.ndarray, n: int | None, name: str) -> np.ndarray:
    if n is None:
        return x_BxN
    n = positive_int(n, "n")
    if n > x_BxN.shape[1]:
        raise ValueError(f"n={n} exceeds the {x_BxN.shape[1]} samples per prompt in {name}")
    return x_BxN[:, :n]


def select_best_of_n(proxy_BxN, *, n: int | None = None) -> np.ndarray:
    """``index_B``: per prompt, the sample with the highest proxy score (first one on ties).

    ``n`` (optional) restricts the choice to each row's first n samples.
    """
    proxy = _first_n(as_matrix(proxy_BxN, "proxy_BxN"), n, "proxy_BxN")
    return np.argmax(proxy, axis=1).astype(np.int64)


class BestOfNScores(NamedTuple):
    index_B: np.ndarray  # chosen sample per prompt
    proxy_B: np.ndarray  # its proxy score
    gold_B: np.ndarray  # its gold reward


def best_of_n_scores(proxy_BxN, gold_BxN, *, n: int | None = None) -> BestOfNScores:
    """Pick each prompt's best sample by proxy and report its proxy and gold scores."""
    proxy = as_matrix(proxy_BxN, "proxy_BxN")
    gold = as_matrix(gold_BxN, "gold_BxN")
    if proxy.shape != gold.shape:
        raise ValueError(f"proxy_BxN has shape {proxy.shape} but gold_BxN has {gold.shape}")
    index = select_best_of_n(proxy, n=n)
    rows = np.arange(proxy.shape[0])
    return BestOfNScores(index, proxy[rows, index], gold[rows, index])


@dataclasses.dataclass(frozen=True)
class BestOfNPoint:
    """Expected scores of best-of-n, averaged over prompts, at KL_bon(n)."""

    n: int
    kl: float  # KL_bon(n), nats
    proxy: float  # E[proxy score of the chosen sample]
    gold: float  # E[gold reward of the chosen sample]; NaN without a gold reward

    def frontier_point(self, run: str = "best-of-n") -> FrontierPoint:
        return FrontierPoint(self.kl, self.gold, self.proxy, run, None, "best_of_n")


def _rank_weights(big_n: int, n: int) -> np.ndarray:
    """w_r for r = 1 … N (worst to best): P(rank r is the best of a random n-subset)."""
    total = math.comb(big_n, n)
    # Python integers keep C(·,·) exact for any N; one division rounds once.
    return np.array([math.comb(r - 1, n - 1) / total for r in range(1, big_n + 1)])


def best_of_n_curve(proxy_BxN, gold_BxN=None, *, ns: Sequence[int]) -> list[BestOfNPoint]:
    """Best-of-n for each n in ``ns`` (each ≤ N) from N samples per prompt, without resampling.

    Uses the exact rank-weight estimator in the module docstring; among tied proxy scores the
    earlier sample counts as better, as in ``select_best_of_n``.
    """
    proxy = as_matrix(proxy_BxN, "proxy_BxN")
    gold = None if gold_BxN is None else as_matrix(gold_BxN, "gold_BxN")
    if gold is not None and gold.shape != proxy.shape:
        raise ValueError(f"proxy_BxN has shape {proxy.shape} but gold_BxN has {gold.shape}")
    if len(ns) == 0:
        raise ValueError("ns is empty")
    big_n = proxy.shape[1]
    # Ascending by proxy; at equal proxy the later sample first, so the earlier ranks higher.
    order = np.lexsort((-np.arange(big_n)[None, :].repeat(proxy.shape[0], 0), proxy), axis=1)
    proxy_sorted = np.take_along_axis(proxy, order, axis=1)
    gold_sorted = None if gold is None else np.take_along_axis(gold, order, axis=1)
    points = []
    for n in ns:
        n = positive_int(n, "ns")
        if n > big_n:
            raise ValueError(f"ns holds n={n}, more than the {big_n} samples per prompt")
        w = _rank_weights(big_n, n)
        g = math.nan if gold_sorted is None else float(np.mean(gold_sorted @ w))
        points.append(BestOfNPoint(n, bon_kl(n), float(np.mean(proxy_sorted @ w)), g))
    return points


@dataclasses.dataclass(frozen=True)
class BestOfNRun:
    """What ``run_best_of_n`` sampled, scored and chose."""

    responses: Any  # as returned by sample_fn: B groups of N responses
    chosen: list  # chosen[b] = responses[b][index_B[b]]
    index_B: np.ndarray  # best of all N per prompt
    proxy_BxN: np.ndarray
    gold_BxN: np.ndarray | None
    points: list[BestOfNPoint]  # the curve over ns


def run_best_of_n(
    prompts: Sequence,
    *,
    n: int,
    sample_fn: Callable[[Sequence, int, Any], Any],
    proxy_fn: Callable[[Sequence, Any], Any],
    gold_fn: Callable[[Sequence, Any], Any] | None = None,
    key: Any = None,
    ns: Sequence[int] | None = None,
) -> BestOfNRun:
    """Sample n responses per prompt, score them, and evaluate best-of-k for k in ``ns``.

    - ``sample_fn(prompts, n, key) -> responses``: B groups of n responses (nested lists, or
      an array whose first two axes are (B, n)), e.g. the policy's generator;
    - ``proxy_fn(prompts, responses) -> proxy_BxN``: the reward model's scores;
    - ``gold_fn(prompts, responses) -> gold_BxN`` (optional): the gold reward.
    ``ns`` defaults to the powers of two up to n, and n. Nothing here imports training code,
    so the pipeline plugs in its own generator and reward model.
    """
    n = positive_int(n, "n")
    if len(prompts) == 0:
        raise ValueError("prompts is empty")
    responses = sample_fn(prompts, n, key)
    expected = (len(prompts), n)
    proxy = as_matrix(proxy_fn(prompts, responses), "proxy_fn(prompts, responses)")
    if proxy.shape != expected:
        raise ValueError(f"proxy_fn returned shape {proxy.shape}; expected (B, n) = {expected}")
    gold = None
    if gold_fn is not None:
        gold = as_matrix(gold_fn(prompts, responses), "gold_fn(prompts, responses)")
        if gold.shape != expected:
            raise ValueError(f"gold_fn returned shape {gold.shape}; expected (B, n) = {expected}")
    if ns is None:
        ns = sorted({2**k for k in range(n.bit_length()) if 2**k <= n} | {n})
    index = select_best_of_n(proxy)
    chosen = [responses[b][int(i)] for b, i in enumerate(index)]
    points = best_of_n_curve(proxy, gold, ns=ns)
    return BestOfNRun(responses, chosen, index, proxy, gold, points)
