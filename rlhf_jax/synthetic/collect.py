"""Preference collection on the synthetic task: pairs sampled from a policy, labelled by the
simulated raters or by the feedback model (``feedback.labels``); used by the pipeline's
``preferences`` phase and by every later round of iterated RLHF (`rlhf_jax.synthetic.rounds`)."""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np

from rlhf_jax.inference import decode_responses
from rlhf_jax.synthetic import cai
from rlhf_jax.synthetic import task as task_lib


def collect_preferences(
    pipeline, policy: str, prompts: list[str], out: pathlib.Path, data_path, *, seed: int,
    label_rng: np.random.Generator | None = None, temperature: float | None = None,
) -> dict:  # fmt: skip
    """Samples two responses per prompt from ``policy`` (a phase name or an artifact path),
    labels them, writes the rows to ``data_path`` and ``out``/summary.json and DONE; returns
    the summary; ``seed`` seeds the sampling (and the AI labels), ``label_rng`` the raters
    (default: the task's label stream); ``temperature`` overrides ``preferences.temperature``.
    Pairs that carry no preference (identical) or that a rater could not read (no EOS, an
    empty answer) are left out, and counted."""
    c = pipeline.config
    tokens, mask = pipeline.encode(prompts)
    if temperature is None:
        temperature = c.preferences.temperature
    _, sampler = pipeline.policy_sampler(policy, temperature=temperature)
    key = jax.random.key(seed)
    a_tok, a_mask = sampler(tokens, mask, jax.random.fold_in(key, 0))
    b_tok, b_mask = sampler(tokens, mask, jax.random.fold_in(key, 1))
    a_text, a_end = decode_responses(pipeline.tokenizer, a_tok, a_mask, task_lib.EOS_ID)
    b_text, b_end = decode_responses(pipeline.tokenizer, b_tok, b_mask, task_lib.EOS_ID)
    keep, dropped = [], {"identical": 0, "no_eos": 0, "empty": 0}
    for i in range(len(prompts)):
        if not (a_end[i] and b_end[i]):
            dropped["no_eos"] += 1
        elif not a_text[i] or not b_text[i]:
            dropped["empty"] += 1
        elif a_text[i] == b_text[i]:
            dropped["identical"] += 1
        else:
            keep.append(i)
    pick = lambda xs: [xs[i] for i in keep]
    out.mkdir(parents=True, exist_ok=True)
    if c.feedback.labels == "ai":  # RL-CAI: the feedback model labels, no rater
        rows, labels = cai.ai_labels(
            pipeline, pick(prompts), pick(a_text), pick(b_text), seed=seed + 1,
            record_path=out / "feedback.jsonl",
        )  # fmt: skip
    else:
        rows, info = pipeline.task.label_pairs(
            pick(prompts), pick(a_text), pick(b_text), rng=label_rng
        )
        labels = {
            "label_agreement_with_gold": info["agreement"],
            "gold_ties": info["num_gold_ties"],
            "longer_chosen": info["longer_chosen"],
            "longer_better_by_gold": info["longer_better_by_gold"],
        }
    path = task_lib.write_jsonl(data_path, rows)
    summary = {"prompts": len(prompts), "pairs": len(rows), "dropped": dropped,
               "labels": c.feedback.labels, "temperature": temperature, **labels,
               "path": str(path)}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "DONE").write_text("")
    print(f"[preferences] {json.dumps(summary)}")
    return summary
