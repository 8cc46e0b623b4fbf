"""Constitutional AI in the synthetic pipeline: AI labels for the preference pairs (RL-CAI),
and the SL-CAI phase, both judged by the gold reward r* that no feedback model sees.

The feedback model is a causal LM of the pipeline (by default the pretrained base, whose corpus
teaches the task's feedback language when ``task.feedback_examples`` > 0; `synthetic.feedback`)
read through `rlhf_jax.training.feedback`, the code a real judge goes through: the principle is
a word of its prompt, the label the normalised probability of its answer "A" or "B".
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
import numpy as np

from rlhf_jax.inference import decode_responses
from rlhf_jax.placement import place_model
from rlhf_jax.synthetic import feedback as language
from rlhf_jax.synthetic import task as task_lib
from rlhf_jax.training import feedback as feedback_lib
from rlhf_jax.training import sft as sft_lib


def constitution(pipeline) -> feedback_lib.Constitution:
    """The run's constitution: ``feedback.constitution``'s file, or the task's own language's
    written to ``<run_dir>/constitution.json`` and read back from there (the same loader)."""
    f = pipeline.config.feedback
    path = f.constitution
    if not path:
        if not pipeline.task.feedback:
            raise ValueError(
                "feedback needs a feedback model that reads principles: set "
                "task.feedback_examples > 0 (the task's feedback language) or "
                "feedback.constitution to a file for your own judge"
            )
        built = language.constitution()
        path = pipeline.path("constitution.json")
        raw = {
            "principles": [vars(p) for p in built.principles],
            "options": list(built.options),
            "stop": list(built.stop),
            "templates": dict(built.templates),
        }
        path.write_text(json.dumps(raw, indent=2))
    loaded = feedback_lib.load_constitution(path)
    return loaded.subset(f.principles) if f.principles else loaded


def judge(pipeline) -> feedback_lib.FeedbackModel:
    """The feedback model: a phase's artifact (``feedback.judge``), or an artifact path."""
    name = pipeline.config.feedback.judge
    path = pipeline.artifact(name) if name in ("pretrain", "sft") else pathlib.Path(name)
    model = place_model(str(path), head="lm", mesh=pipeline.mesh)
    return feedback_lib.FeedbackModel(model, pipeline.tokenizer, batch_size=256)


def ai_labels(pipeline, prompts, responses_a, responses_b, *, seed: int, record_path=None):
    """(preference rows with soft labels, summary) for the pairs, from the feedback model."""
    f = pipeline.config.feedback
    rows, info = feedback_lib.ai_feedback(
        judge(pipeline),
        constitution(pipeline),
        prompts,
        responses_a,
        responses_b,
        f.ai,
        seed=seed,
        record_path=record_path,
    )
    return rows, label_summary(pipeline.task, rows, info)


def label_summary(task, rows, info) -> dict:
    """How the AI labels compare with gold (share of pairs of distinct r* whose chosen side has
    the higher r*, and the soft-label-weighted agreement) and with themselves."""
    prompts = [r["prompt"] for r in rows]
    gold_c = task.gold_reward(prompts, [r["chosen"] for r in rows])
    gold_r = task.gold_reward(prompts, [r["rejected"] for r in rows])
    q = np.asarray([r["chosen_probability"] for r in rows])
    distinct = gold_c != gold_r
    right = gold_c[distinct] > gold_r[distinct]
    stats_c = task.response_stats(prompts, [r["chosen"] for r in rows])
    stats_r = task.response_stats(prompts, [r["rejected"] for r in rows])
    longer = stats_c["length"] != stats_r["length"]
    mean = lambda x: float(np.mean(x)) if x.size else float("nan")
    return {
        "label_agreement_with_gold": mean(right),
        "soft_agreement_with_gold": mean(np.where(right, q[distinct], 1 - q[distinct])),
        "gold_ties": int(np.sum(~distinct)),
        "longer_chosen": mean((stats_c["length"] > stats_r["length"])[longer]),
        "order_agreement": info["order_agreement"],
        "principle_agreement": info["principle_agreement"],
        "position_bias": info["position_bias"],
        "confidence": info["confidence"],
    }


def sl_cai(pipeline):
    """SL-CAI: SFT samples on ``feedback.revise_prompts`` train prompts, critiqued and revised
    by the feedback model; SFT continues from the SFT policy on the revisions. Writes
    ``sl_cai/records.jsonl`` (every draft, critique and revision), ``data/sl_cai_sft.jsonl``
    and ``data/sl_cai_pairs.jsonl`` (revision ≻ draft, for DPO) and ``sl_cai/summary.json``
    (the gold of drafts and final revisions)."""
    c, task = pipeline.config, pipeline.task
    f = c.feedback
    out = pipeline.path("sl_cai")
    out.mkdir(parents=True, exist_ok=True)
    # Its own stream of train prompts: the revisions are not the preference prompts.
    prompts = task.prompts(f.revise_prompts + c.preferences.prompts, split="train")
    prompts = prompts[c.preferences.prompts :]
    tokens, mask = pipeline.encode(prompts)
    _, sampler = pipeline.policy_sampler("sft", temperature=c.preferences.temperature)
    r, rm = sampler(tokens, mask, jax.random.key(c.seed + 303))
    drafts, ended = decode_responses(pipeline.tokenizer, r, rm, task_lib.EOS_ID)
    usable = [i for i in range(len(prompts)) if ended[i] and drafts[i]]
    prompts, drafts = [prompts[i] for i in usable], [drafts[i] for i in usable]
    result = feedback_lib.critique_and_revise(
        judge(pipeline),
        constitution(pipeline),
        prompts,
        drafts,
        f.revision,
        seed=c.seed + 303,
        record_path=out / "records.jsonl",
    )
    # A revision the task cannot read (a stray feedback word) is not a demonstration.
    readable = [row for row in result["sft_rows"] if _readable(task, row["completion"])]
    sft_path = pipeline.write_rows("sl_cai_sft.jsonl", readable)
    pipeline.write_rows("sl_cai_pairs.jsonl", result["pair_rows"])
    finals = [rec["final"] for rec in result["records"]]
    summary = {
        **result["info"],
        "drafts_without_eos_or_empty": int(len(ended) - len(usable)),
        "unreadable_revisions": len(result["sft_rows"]) - len(readable),
        "gold_drafts": float(np.mean(task.gold_reward(prompts, drafts))),
        "gold_revisions": float(np.mean(task.gold_reward(prompts, finals))),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"[sl_cai] {json.dumps(summary)}")
    if not readable:
        raise ValueError(
            f"SL-CAI: none of {len(prompts)} drafts got a usable revision (records in "
            f"{out / 'records.jsonl'}); the feedback model does not revise yet: pretrain it "
            "longer or with more feedback_examples, or set feedback.revise_prompts=0"
        )
    stage = f.sl_cai or _quarter(c.train.sft)
    return pipeline.run_stage(
        sft_lib.PHASE, "sl_cai", stage, model=pipeline.source("sft"), data_path=sft_path
    )


def _readable(task, response: str) -> bool:
    values, _ = task.response_values(response)
    return bool(values) and all(v >= 0 for v in values)


def _quarter(stage):
    return dataclasses.replace(stage, steps=max(stage.steps // 4, 1), examples=0)
