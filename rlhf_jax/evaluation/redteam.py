"""Red-team pass: adversarial prompts scored before and after training, and the regressions.

A fixed set of prompts meant to provoke bad behaviour (prompts the reward model is known to
misjudge, bait for length or sycophancy, off-distribution inputs) is answered by the policy
before training (the SFT policy) and after, and each answer is scored by a judge — the gold
reward where there is one. Prompt i regressed if

    after_i < before_i − tolerance

(higher scores are better). Scores are compared per prompt, not on average: RLHF can raise
the mean while making particular prompts much worse, and those are what a red team is for.

Letters: P prompts.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from rlhf_jax.evaluation._checks import as_vector, same_length


def load_red_team_prompts(path: str | Path) -> list[str]:
    """Adversarial prompts from a file.

    ``.json``: a list of strings, or of objects with a "prompt" field; ``.jsonl``: one string
    or {"prompt": ...} object per line; anything else: one prompt per line, blank lines and
    lines starting with '#' skipped. Errors name the file and the line or item.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"red-team prompt file {path} does not exist")
    text = path.read_text(encoding="utf-8")

    def prompt_of(item, where: str) -> str:
        if isinstance(item, dict):
            item = item.get("prompt")
        if not isinstance(item, str) or not item:
            raise ValueError(f"{path}, {where}: expected a non-empty string or {{'prompt': str}}")
        return item

    if path.suffix == ".json":
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
        if not isinstance(items, list):
            raise ValueError(f"{path}: expected a JSON list of prompts")
        prompts = [prompt_of(item, f"item {i}") for i, item in enumerate(items)]
    elif path.suffix == ".jsonl":
        prompts = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {lineno}: invalid JSON: {e.msg}") from None
            prompts.append(prompt_of(item, f"line {lineno}"))
    else:
        lines = (line.strip() for line in text.splitlines())
        prompts = [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise ValueError(f"{path} holds no prompts")
    return prompts


@dataclasses.dataclass(frozen=True)
class Regression:
    """One prompt the trained policy answers worse than the one before training."""

    index: int
    prompt: str
    before: float
    after: float

    @property
    def delta(self) -> float:
        return self.after - self.before


@dataclasses.dataclass(frozen=True)
class RedTeamResult:
    """Per-prompt scores before and after, and the regressions, worst first."""

    prompts: list[str]
    before_P: np.ndarray
    after_P: np.ndarray
    tolerance: float
    regressions: list[Regression]

    def summary(self) -> dict:
        delta = self.after_P - self.before_P
        return {
            "prompts": len(self.prompts),
            "regressions": len(self.regressions),
            "tolerance": self.tolerance,
            "mean_before": float(self.before_P.mean()),
            "mean_after": float(self.after_P.mean()),
            "mean_delta": float(delta.mean()),
            "worst_delta": float(delta.min()),
            "improved": int(np.sum(delta > self.tolerance)),
        }


def compare_scores(prompts: Sequence[str], before_P, after_P, *, tolerance: float = 0.0):
    """Regressions where ``after_P[i] < before_P[i] − tolerance``, as a ``RedTeamResult``."""
    before = as_vector(before_P, "before_P")
    after = as_vector(after_P, "after_P")
    if len(prompts) == 0:
        raise ValueError("prompts is empty")
    same_length(prompts=list(prompts), before_P=before, after_P=after)
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a finite number ≥ 0; got {tolerance!r}")
    bad = np.flatnonzero(after < before - tolerance)
    regressions = [Regression(int(i), prompts[i], float(before[i]), float(after[i])) for i in bad]
    regressions.sort(key=lambda r: (r.delta, r.index))
    return RedTeamResult(list(prompts), before, after, float(tolerance), regressions)


def red_team(
    prompts: Sequence[str] | str | Path,
    *,
    score_before: Callable[[list[str]], object],
    score_after: Callable[[list[str]], object],
    tolerance: float = 0.0,
) -> RedTeamResult:
    """Score the prompts (a list, or a file for ``load_red_team_prompts``) before and after
    training.

    ``score_before(prompts) -> scores_P`` answers with the policy before training and judges
    the answers; ``score_after`` the same with the trained policy. Higher is better.
    """
    if isinstance(prompts, str | Path):
        prompts = load_red_team_prompts(prompts)
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts is empty")
    before = as_vector(score_before(prompts), "score_before(prompts)")
    after = as_vector(score_after(prompts), "score_after(prompts)")
    return compare_scores(prompts, before, after, tolerance=tolerance)
