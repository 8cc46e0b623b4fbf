"""Per-iteration metric histories: the key names evaluation reads, and columns out of them.

A history is what a training loop already logs: a list of dicts, one per iteration, of plain
numbers. The default names are TRL's, which the PPO metrics use; the gold reward and response
length have no TRL name, so they are ours. Pass a different ``HistoryKeys`` to read other logs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class HistoryKeys:
    """Where each quantity lives in a per-iteration metrics dict."""

    iteration: str = "iteration"  # iteration number (the row index when absent)
    kl: str = "objective/kl"  # mean KL(π ‖ π_ref) per response, in nats
    proxy: str = "objective/scores"  # mean reward-model (proxy) score, before the KL penalty
    # The raw reward-model score where ``proxy`` is normalised (PPO's reward normalisation):
    # the report reads it when every run logs it, so iterations and evaluations of the reward
    # model (raw scores) share one scale.
    raw_proxy: str | None = "objective/raw_scores"
    gold: str = "gold/score"  # mean gold reward r* of the same responses
    length: str = "response/length_mean"  # mean response length in tokens
    entropy: str = "objective/entropy"  # mean policy entropy


DEFAULT_KEYS = HistoryKeys()


def column(history: Sequence[Mapping], key: str) -> np.ndarray:
    """``history[i][key]`` as float64, NaN where a row lacks the key or holds None."""
    out = np.full(len(history), np.nan)
    for i, row in enumerate(history):
        if not isinstance(row, Mapping):
            raise ValueError(f"history[{i}] must be a dict of metrics; got {type(row).__name__}")
        value = row.get(key)
        if value is not None:
            try:
                out[i] = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"history[{i}][{key!r}] is not a number: {value!r}") from None
    return out


def iterations(history: Sequence[Mapping], keys: HistoryKeys = DEFAULT_KEYS) -> np.ndarray:
    """The iteration column, falling back to the row index where it is missing."""
    its = column(history, keys.iteration)
    return np.where(np.isnan(its), np.arange(len(history), dtype=np.float64), its)


def has(history: Sequence[Mapping], key: str) -> bool:
    """Whether any row holds a finite value for ``key``."""
    return bool(np.any(np.isfinite(column(history, key))))


def window_means(x, window: int) -> np.ndarray:
    """Means of every ``window`` consecutive values of ``x`` (whole windows only, so
    len(x) − window + 1 of them), float64; one mean of all of ``x`` when it is shorter."""
    x = np.asarray(x, np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"x must be a non-empty 1-D array; got shape {x.shape}")
    if window < 1:
        raise ValueError(f"window={window}; expected >= 1")
    w = min(window, x.size)
    return np.array([x[i : i + w].mean() for i in range(x.size - w + 1)])
