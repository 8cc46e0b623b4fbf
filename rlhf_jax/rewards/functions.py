"""Reward functions: verifiable rewards computed from the text or from the token ids.

Two kinds, registered by name so that a config can pick them (``rewards.functions``), or named
by a dotted path to a user's own function (``mypackage.rewards.correct`` or
``mypackage.rewards:correct``):

    text    fn(*, prompts, completions, **columns) -> Sequence[float]   (B,)
            Python on the host, between rollout and update: ``prompts`` as the dataset holds
            them (strings or chat messages), ``completions`` the decoded responses (up to EOS),
            and every other column of the prompts' rows, batched (TRL's convention).
    tokens  fn(prompt_BxP, prompt_mask_BxP, response_BxN, response_mask_BxN) -> (B,) float
            jittable; it stays inside the compiled iteration (prompts left-padded, responses
            masked to their tokens, EOS included).

A function's options (a regex, a length budget) are keyword arguments, set per function in
``rewards.kwargs``. Built in: ``exact_match``, ``numeric_match``, ``format_match``,
``repetition_penalty`` (text), ``length_penalty``, ``overlong_penalty`` (tokens); and, as
features for the reward-hacking monitors, ``hedging``, ``agreement``, ``prompt_overlap`` (text).

Letters: B batch, P prompt length, N response length.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal

import jax.numpy as jnp

Kind = Literal["text", "tokens"]


@dataclasses.dataclass(frozen=True)
class RewardFunction:
    name: str  # how metrics name it: rewards/<name>/mean
    kind: Kind
    fn: Callable


REGISTRY: dict[str, RewardFunction] = {}


def reward_function(name: str, kind: Kind):
    """Registers ``fn`` under ``name`` (a decorator); a user's module may register its own."""
    if kind not in ("text", "tokens"):
        raise ValueError(f"reward function kind={kind!r}; expected 'text' or 'tokens'")

    def register(fn):
        REGISTRY[name] = RewardFunction(name, kind, fn)
        fn.reward_kind = kind
        return fn

    return register


def _import(path: str):
    module, sep, attr = path.partition(":")
    if not sep:
        module, _, attr = path.rpartition(".")
    if not module or not attr:
        raise ValueError(f"reward function {path!r}: not a registered name {sorted(REGISTRY)}")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(
            f"reward function {path!r}: not a registered name ({', '.join(sorted(REGISTRY))}) "
            f"and not importable: {e}"
        ) from None


def resolve(name: str, kwargs: Mapping[str, Any] | None = None) -> RewardFunction:
    """The function registered as ``name``, or at the dotted path ``name`` (a text function
    unless it was marked ``reward_kind = "tokens"`` or registered), with ``kwargs`` bound."""
    if name in REGISTRY:
        found = REGISTRY[name]
    else:
        fn = _import(name)
        if not callable(fn):
            raise ValueError(f"reward function {name!r} is not callable")
        found = RewardFunction(name, getattr(fn, "reward_kind", "text"), fn)
    if kwargs:
        found = dataclasses.replace(found, fn=functools.partial(found.fn, **dict(kwargs)))
    return found


# ---------------------------------------------------------------------------------------------
# Text functions

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
DEFAULT_FORMAT = r"<think>.*?</think>\s*<answer>.*?</answer>"


def _column(columns: Mapping, name: str, fn: str, n: int) -> list:
    if name not in columns:
        raise ValueError(
            f"reward function {fn!r} needs a {name!r} column in the prompt data; it has "
            f"{sorted(columns)}"
        )
    values = list(columns[name])
    if len(values) != n:
        raise ValueError(f"reward function {fn!r}: {len(values)} {name!r} values for {n} rows")
    return values


@reward_function("exact_match", "text")
def exact_match(*, prompts, completions, column: str = "answer", **columns) -> list[float]:
    """1 when the completion equals the row's reference (``column``, default "answer"), after
    stripping surrounding white space; else 0."""
    refs = _column(columns, column, "exact_match", len(completions))
    return [float(c.strip() == str(r).strip()) for c, r in zip(completions, refs, strict=True)]


def last_number(text: str) -> float | None:
    """The last number in ``text`` (thousands commas allowed), e.g. GSM8K's '#### 1,234'."""
    found = _NUMBER.findall(str(text))
    return float(found[-1].replace(",", "")) if found else None


@reward_function("numeric_match", "text")
def numeric_match(
    *, prompts, completions, column: str = "answer", rel_tol: float = 1e-6, **columns
) -> list[float]:
    """1 when the last number of the completion equals the last number of the reference
    (``column``) within ``rel_tol``; 0 otherwise, or when either has no number."""
    refs = _column(columns, column, "numeric_match", len(completions))
    out = []
    for c, r in zip(completions, refs, strict=True):
        got, want = last_number(c), last_number(r)
        ok = got is not None and want is not None and math.isclose(got, want, rel_tol=rel_tol)
        out.append(float(ok))
    return out


@reward_function("format_match", "text")
def format_match(*, prompts, completions, pattern: str = DEFAULT_FORMAT, **_) -> list[float]:
    """1 when the whole (stripped) completion matches the regex ``pattern`` (``.`` matches
    newlines; default: DeepSeek-R1's <think>…</think> <answer>…</answer>); else 0."""
    regex = re.compile(pattern, re.DOTALL)
    return [float(regex.fullmatch(c.strip()) is not None) for c in completions]


@reward_function("repetition_penalty", "text")
def repetition_penalty(*, prompts, completions, n: int = 3, **_) -> list[float]:
    """−(share of repeated word n-grams): 0 for a completion whose n-grams are all distinct,
    near −1 for one that loops; 0 when it has fewer than n words."""
    if n < 1:
        raise ValueError(f"repetition_penalty: n must be >= 1; got {n}")
    out = []
    for c in completions:
        words = c.split()
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        out.append(-(1.0 - len(set(grams)) / len(grams)) if grams else 0.0)
    return out


# Features for the reward-hacking monitors (``monitor_features``): what a reward model may
# learn to like beside what the task asks for. Usable as rewards too, but meant to be watched.
HEDGES = ("i think", "perhaps", "maybe", "possibly", "it depends", "i'm not sure", "might be")
AGREEMENT = ("you're right", "you are right", "i agree", "great question", "good point",
             "absolutely", "exactly right")  # fmt: skip


def _text(value) -> str:
    """A prompt as text: a string, or chat messages' contents joined."""
    if isinstance(value, str):
        return value
    return "\n".join(str(m.get("content", "")) for m in value)


def _phrases(completions, phrases, fn: str) -> list[float]:
    if isinstance(phrases, str) or not phrases:
        raise ValueError(f"{fn}: phrases must be a non-empty list of strings; got {phrases!r}")
    patterns = [re.compile(r"\b" + re.escape(p.lower()) + r"\b") for p in phrases]
    return [float(sum(len(p.findall(c.lower())) for p in patterns)) for c in completions]


@reward_function("hedging", "text")
def hedging(*, prompts, completions, phrases=HEDGES, **_) -> list[float]:
    """How many hedging phrases (``phrases``, whole words, any case) each completion holds."""
    return _phrases(completions, phrases, "hedging")


@reward_function("agreement", "text")
def agreement(*, prompts, completions, phrases=AGREEMENT, **_) -> list[float]:
    """How many agreeing-with-the-user phrases (sycophancy's words) each completion holds."""
    return _phrases(completions, phrases, "agreement")


@reward_function("prompt_overlap", "text")
def prompt_overlap(*, prompts, completions, n: int = 3, **_) -> list[float]:
    """Share of the completion's word n-grams that occur in its prompt (echoing the user);
    0 for a completion of fewer than n words."""
    if n < 1:
        raise ValueError(f"prompt_overlap: n must be >= 1; got {n}")
    out = []
    for prompt, c in zip(prompts, completions, strict=True):
        p, words = _text(prompt).lower().split(), c.lower().split()
        seen = {tuple(p[i : i + n]) for i in range(len(p) - n + 1)}
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        out.append(sum(g in seen for g in grams) / len(grams) if grams else 0.0)
    return out


# ---------------------------------------------------------------------------------------------
# Token functions


def _lengths(response_mask_BxN):
    return jnp.sum(response_mask_BxN, axis=-1).astype(jnp.float32)


@reward_function("length_penalty", "tokens")
def length_penalty(prompt_BxP, prompt_mask_BxP, response_BxN, response_mask_BxN):
    """−(response tokens / N): from 0 (empty) to −1 (the whole sampling budget)."""
    del prompt_BxP, prompt_mask_BxP, response_BxN
    return -_lengths(response_mask_BxN) / response_mask_BxN.shape[1]


@reward_function("overlong_penalty", "tokens")
def overlong_penalty(
    prompt_BxP,
    prompt_mask_BxP,
    response_BxN,
    response_mask_BxN,
    *,
    max_length: int | None = None,
    cache_length: int = 0,
):
    """DAPO's soft overlong punishment (Yu et al. 2025), with L_max = ``max_length`` (default
    N) and L_cache = ``cache_length``:

        0 for |y| ≤ L_max − L_cache;  (L_max − L_cache − |y|) / L_cache up to L_max;  −1 beyond
    """
    del prompt_BxP, prompt_mask_BxP, response_BxN
    n = response_mask_BxN.shape[1]
    l_max = n if max_length is None else max_length
    if not 0 <= cache_length <= l_max:
        raise ValueError(f"overlong_penalty: cache_length {cache_length} not in [0, {l_max}]")
    length = _lengths(response_mask_BxN)
    start = l_max - cache_length
    ramp = (start - length) / max(cache_length, 1)
    return jnp.where(length <= start, 0.0, jnp.where(length <= l_max, ramp, -1.0))
