"""SL-CAI: a model critiques and revises its own responses under sampled principles.

For each prompt and each of ``rounds`` rounds a principle is drawn; the model is asked for a
critique of the current response under the principle's critique request, then for a revision
under its revision request given that critique; the revision becomes the current response.
The result (Bai et al. 2022; the open recipes' data):

    SFT rows      {"prompt", "completion": final revision}     (prompts with a used revision)
    pair rows     {"prompt", "chosen": final revision, "rejected": draft}     (for DPO)
    records       every intermediate text: draft, and per round principle, critique, revision

A revision that comes back empty or unfinished (no EOS within the budget) is not used: the
response stays as it was for the next round, and the round is counted under "kept_previous".
Prompts whose final response is still the draft give no pair ("unrevised").
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

import jax
import numpy as np

from rlhf_jax.training.feedback.constitution import Constitution
from rlhf_jax.training.feedback.judge import FeedbackModel


@dataclasses.dataclass(frozen=True, kw_only=True)
class RevisionConfig:
    rounds: int = 1  # critique → revision rounds per response
    max_critique_tokens: int = 64
    max_revision_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy critiques and revisions

    def __post_init__(self):
        if self.rounds < 1:
            raise ValueError(f"rounds={self.rounds}; expected >= 1")


def critique_and_revise(
    model: FeedbackModel,
    constitution: Constitution,
    prompts: Sequence[str],
    drafts: Sequence[str],
    config: RevisionConfig = RevisionConfig(),
    *,
    seed: int = 0,
    record_path: str | os.PathLike | None = None,
) -> dict:
    """Runs the rounds (module doc). Returns {"sft_rows", "pair_rows", "records", "info"};
    ``record_path`` gets the records as JSON lines."""
    if len(prompts) != len(drafts):
        raise ValueError(f"{len(prompts)} prompts but {len(drafts)} drafts")
    rng = np.random.default_rng(seed)
    key = jax.random.key(seed)
    current = list(drafts)
    records = [
        {"prompt": p, "draft": d, "rounds": []} for p, d in zip(prompts, drafts, strict=True)
    ]
    kept_previous = 0
    for r in range(config.rounds):
        picks = rng.integers(len(constitution.principles), size=len(prompts))
        principles = [constitution.principles[k] for k in picks]
        critique_in = [
            constitution.critique_prompt(p, c, pr)
            for p, c, pr in zip(prompts, current, principles, strict=True)
        ]
        critiques, _ = model.generate(
            critique_in,
            max_new_tokens=config.max_critique_tokens,
            temperature=config.temperature,
            key=jax.random.fold_in(key, 2 * r),
        )
        critiques = [constitution.trim(c) for c in critiques]
        revision_in = [
            constitution.revision_prompt(p, c, pr, crit)
            for p, c, pr, crit in zip(prompts, current, principles, critiques, strict=True)
        ]
        revisions, ended = model.generate(
            revision_in,
            max_new_tokens=config.max_revision_tokens,
            temperature=config.temperature,
            key=jax.random.fold_in(key, 2 * r + 1),
        )
        for i, (pr, crit, rev, end) in enumerate(
            zip(principles, critiques, revisions, ended, strict=True)
        ):
            rev = constitution.trim(rev)
            used = bool(rev) and bool(end)
            kept_previous += not used
            records[i]["rounds"].append(
                {"principle": pr.name, "critique": crit, "revision": rev, "used": used}
            )
            if used:
                current[i] = rev
    for rec, final in zip(records, current, strict=True):
        rec["final"] = final
    revised = [any(r["used"] for r in rec["rounds"]) for rec in records]
    sft_rows = [
        {"prompt": p, "completion": c}
        for p, c, ok in zip(prompts, current, revised, strict=True)
        if ok and c
    ]
    pair_rows = [
        {"prompt": p, "chosen": c, "rejected": d}
        for p, c, d in zip(prompts, current, drafts, strict=True)
        if c and d and c != d
    ]
    info = {
        "prompts": len(prompts),
        "rounds": config.rounds,
        "kept_previous": kept_previous,
        "revised": sum(revised),
        "unrevised": sum(c == d for c, d in zip(current, drafts, strict=True)),
        "empty_final": sum(not c for c in current),
        "pairs": len(pair_rows),
    }
    if record_path is not None:
        with open(record_path, "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec) + "\n")
    return {"sft_rows": sft_rows, "pair_rows": pair_rows, "records": records, "info": info}
