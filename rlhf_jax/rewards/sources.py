"""The score RL optimises: a weighted sum of sources, each logged on its own.

    score = w_model · normalised reward-model score + Σ_f w_f · f(prompt, response)

`RewardsConfig` names the sources; `resolve_sources` turns it into the weighted functions, and
`score_texts` runs the text functions on a batch of decoded responses, checking what each
returns (a wrong length, a non-number or a non-finite value is an error naming the function
and the row).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rlhf_jax.rewards.functions import REGISTRY, RewardFunction, resolve

MODEL = "reward_model"  # the name the reward model's score is logged under


@dataclasses.dataclass(frozen=True, kw_only=True)
class RewardsConfig:
    """Which sources make the score, and with what weights."""

    model_weight: float = 1.0  # the reward model's weight (its score normalised on SFT samples)
    functions: tuple[str, ...] = ()  # registered names or dotted paths (rewards.functions)
    weights: tuple[float, ...] = ()  # one per function; empty: 1.0 each
    # Per function: its keyword options; those of a function not listed in ``functions`` are
    # kept for when it is (a preset's options survive turning the function off)
    kwargs: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.weights and len(self.weights) != len(self.functions):
            raise ValueError(
                f"rewards.weights has {len(self.weights)} entries for "
                f"{len(self.functions)} rewards.functions"
            )
        unknown = sorted(set(self.kwargs) - set(self.functions) - set(REGISTRY))
        if unknown:
            raise ValueError(
                f"rewards.kwargs names {unknown}: neither in rewards.functions nor registered "
                f"({', '.join(sorted(REGISTRY))})"
            )
        if len(set(self.functions)) != len(self.functions):
            raise ValueError(f"rewards.functions names a function twice: {self.functions}")


@dataclasses.dataclass(frozen=True)
class WeightedFunction:
    function: RewardFunction
    weight: float

    @property
    def name(self) -> str:
        return self.function.name


def resolve_sources(config: RewardsConfig) -> tuple[WeightedFunction, ...]:
    """The configured functions, resolved and weighted, in config order."""
    weights = config.weights or (1.0,) * len(config.functions)
    return tuple(
        WeightedFunction(resolve(name, config.kwargs.get(name)), float(w))
        for name, w in zip(config.functions, weights, strict=True)
    )


def score_texts(
    functions: Sequence[WeightedFunction],
    prompts: Sequence,
    completions: Sequence[str],
    columns: Mapping[str, Sequence[Any]],
    *,
    rows: Sequence[int] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(weighted sum (B,) float32, each function's values (B,) float64 by name)`` of the text
    functions on one batch. ``rows`` (the prompt file's row of each completion) name the row
    in errors."""
    n = len(completions)
    total = np.zeros(n, np.float64)
    parts = {}
    for wf in functions:
        if wf.function.kind != "text":
            continue
        out = wf.function.fn(prompts=list(prompts), completions=list(completions), **columns)
        values = _check(wf.name, out, n, rows)
        parts[wf.name] = values
        total += wf.weight * values
    return total.astype(np.float32), parts


def _check(name: str, out, n: int, rows) -> np.ndarray:
    where = lambda i: f"completion {i}" + ("" if rows is None else f" (prompt row {rows[i]})")
    try:
        values = list(out)
    except TypeError:
        raise ValueError(f"reward function {name!r} returned {type(out).__name__}, not a "
                         f"sequence of {n} numbers") from None  # fmt: skip
    if len(values) != n:
        raise ValueError(f"reward function {name!r} returned {len(values)} values for {n} rows")
    array = np.empty(n, np.float64)
    for i, v in enumerate(values):
        try:
            array[i] = float(v)
        except (TypeError, ValueError):
            raise ValueError(
                f"reward function {name!r}: {where(i)} got {v!r}, not a number"
            ) from None
        if not np.isfinite(array[i]):
            raise ValueError(f"reward function {name!r}: {where(i)} got {v!r}")
    return array
