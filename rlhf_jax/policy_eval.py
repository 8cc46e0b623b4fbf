"""Judging trained policies outside training: sample each on a prompt file, score the samples
with reward models and reward functions, compare them, and write the report.

    result = evaluate_policies(PolicyEvalConfig(policies={"ppo": ..., "sft": ...}, ...))

For every policy: m samples per prompt at temperature T; the judge's score of each (a weighted
sum of a reward model's raw score and reward functions, `rlhf_jax.rewards`), each source on its
own, the response length and how often it ends (EOS); the Monte Carlo KL to the reference
policy E_π[log π − log π_ref] (both at T); win rates of every policy against the baseline by
per-prompt mean judge score, with Wilson intervals. The report (`evaluation.write_report`:
markdown, PNG, JSON) goes to ``run_dir``.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import checkpoint as ckpt_lib
from rlhf_jax import evaluation as ev
from rlhf_jax import models, rewards
from rlhf_jax import sharding as sharding_lib
from rlhf_jax.data import load_prompt_rows
from rlhf_jax.generation import SamplingConfig
from rlhf_jax.inference import Sampler, Scorer
from rlhf_jax.placement import (
    ModelSource,
    check_same_tokenizer,
    check_tokenizer,
    model_config,
    place_model,
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PolicyEvalConfig:
    run_dir: str  # where the report goes
    policies: dict  # name → ModelSource fields of each policy judged
    baseline: str  # the policy the others' win rates are against (one of ``policies``)
    reference: str | None = None  # the KL reference (one of ``policies``); default: baseline
    reward: ModelSource | None = None  # a reward model in the judge (its raw score)
    rewards: rewards.RewardsConfig = dataclasses.field(default_factory=rewards.RewardsConfig)
    prompts: str  # a file (or hub dataset) with a prompt column
    prompt_split: str = "train"
    prompt_column: str = "prompt"
    prompt_length: int = 64  # longer prompts are left out and counted
    num_prompts: int = 256  # the first N prompts that fit (0: all)
    samples_per_prompt: int = 4  # m
    response_length: int = 64  # tokens sampled (fixed; a response without EOS is counted)
    temperature: float = 1.0  # T of sampling and of the KL's log-probs
    batch_size: int = 64  # rows per sampling and scoring call
    seed: int = 0
    mesh: sharding_lib.MeshConfig = dataclasses.field(default_factory=sharding_lib.MeshConfig)

    def __post_init__(self):
        if self.baseline not in self.policies:
            raise ValueError(f"baseline={self.baseline!r} is not one of {sorted(self.policies)}")
        if (self.reference or self.baseline) not in self.policies:
            raise ValueError(f"reference={self.reference!r} is not one of {sorted(self.policies)}")
        if self.reward is None and not self.rewards.functions:
            raise ValueError("the judge needs a reward model (reward) or rewards.functions")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0; got {self.temperature}")


def _source(fields) -> ModelSource:
    return fields if isinstance(fields, ModelSource) else ModelSource(**fields)


def evaluate_policies(config: PolicyEvalConfig) -> dict:
    """Samples, scores and compares the policies; writes the report; returns the summary."""
    out = pathlib.Path(config.run_dir)
    mesh = sharding_lib.make_mesh(config.mesh)
    sources = {name: _source(s) for name, s in config.policies.items()}
    tokenizer = models.load_tokenizer(sources[config.baseline].tokenizer_path)
    for name, source in sources.items():
        check_tokenizer(
            tokenizer, model_config(source), where=f"policies.{name}",
            field=f"policies.{config.baseline}.tokenizer",
        )  # fmt: skip
    if config.reward is not None:  # the judge scores the policies' token ids
        check_same_tokenizer(tokenizer, config.reward, where="the judge's reward model")
        check_tokenizer(tokenizer, model_config(config.reward), where="reward", field="reward")
    prompt_set = load_prompt_rows(
        config.prompts, split=config.prompt_split, column=config.prompt_column
    )
    tokens, mask, kept = models.fit_prompts(
        tokenizer, prompt_set.prompts, max_length=config.prompt_length
    )
    if config.num_prompts:
        tokens, mask, kept = (
            tokens[: config.num_prompts],
            mask[: config.num_prompts],
            kept[: config.num_prompts],
        )
    if not len(kept):
        raise ValueError(
            f"{config.prompts}: no prompt fits in prompt_length={config.prompt_length}"
        )
    m = config.samples_per_prompt
    p_tok, p_mask = np.repeat(tokens, m, axis=0), np.repeat(mask, m, axis=0)
    prompts, columns = prompt_set.rows(np.repeat(kept, m))
    functions = rewards.resolve_sources(config.rewards)
    judge_model = None
    if config.reward is not None:
        judge_model = Scorer(
            place_model(config.reward, head="reward", mesh=mesh, seed=config.seed),
            batch_size=config.batch_size,
            pooling=pooling_of(config.reward),
        )
    placed = {n: place_model(s, head="lm", mesh=mesh, seed=config.seed) for n, s in sources.items()}
    eos_ids = tuple(placed[config.baseline].config.eos_token_ids) or (tokenizer.eos_token_id,)
    sampling = SamplingConfig(
        max_new_tokens=config.response_length,
        temperature=config.temperature,
        eos_ids=eos_ids,
        pad_id=int(tokenizer.pad_token_id),
    )
    reference = Scorer(
        placed[config.reference or config.baseline],
        batch_size=config.batch_size,
        temperature=config.temperature,
    )
    key = jax.random.key(config.seed)
    judged = {}
    for salt, (name, policy) in enumerate(placed.items()):
        sampler = Sampler(policy, sampling, batch_size=config.batch_size)
        r, rm = sampler(p_tok, p_mask, jax.random.fold_in(key, salt))
        texts, ended = models.decode_responses(tokenizer, r, rm, eos_ids)
        parts, score = _judge(
            config, functions, judge_model, (p_tok, p_mask, r, rm), prompts, texts, columns, kept
        )
        own = Scorer(policy, batch_size=config.batch_size, temperature=config.temperature)
        kl = own.logprob(p_tok, p_mask, r, rm) - reference.logprob(p_tok, p_mask, r, rm)
        judged[name] = {
            "score": score.reshape(-1, m),
            "parts": {k: v.reshape(-1, m) for k, v in parts.items()},
            "kl": kl.reshape(-1, m),
            "length": rm.sum(-1).reshape(-1, m),
            "ended": ended.reshape(-1, m),
            "samples": [
                {"prompt": p, "response": t} for p, t in zip(prompts[:8], texts[:8], strict=True)
            ],
        }
    return _report(config, judged, out, num_dropped=len(prompt_set.prompts) - len(kept))


def pooling_of(source: ModelSource) -> str:
    """How a reward model pools its scores: what its artifact records, else "last"."""
    if source.origin != "artifact":
        return "last"
    return ckpt_lib.read_artifact_meta(source.artifact).get("pooling") or "last"


def _judge(config, functions, judge_model, arrays, prompts, texts, columns, kept):
    """(each source's values (N,) float64 by name, the weighted judge score (N,))."""
    p_tok, p_mask, r, rm = arrays
    parts, score = {}, np.zeros(len(texts), np.float64)
    if judge_model is not None:
        parts[rewards.MODEL] = judge_model.reward(p_tok, p_mask, r, rm).astype(np.float64)
        score += config.rewards.model_weight * parts[rewards.MODEL]
    rows = np.repeat(kept, config.samples_per_prompt)
    _, text_parts = rewards.score_texts(functions, prompts, texts, columns, rows=rows)
    for wf in functions:
        if wf.function.kind == "tokens":
            args = (jnp.asarray(p_tok), jnp.asarray(p_mask), jnp.asarray(r), jnp.asarray(rm))
            parts[wf.name] = np.asarray(jax.jit(wf.function.fn)(*args), np.float64)
        else:
            parts[wf.name] = text_parts[wf.name]
        score += wf.weight * parts[wf.name]
    return parts, score


def _report(config: PolicyEvalConfig, judged: dict, out: pathlib.Path, *, num_dropped: int):
    summary = {
        name: {
            "score": float(j["score"].mean()),
            **{f"rewards/{k}": float(v.mean()) for k, v in j["parts"].items()},
            "kl": float(j["kl"].sum(axis=-1).mean() / config.samples_per_prompt),
            "length": float(j["length"].mean()),
            "length_std": float(j["length"].std()),
            "eos_fraction": float(j["ended"].mean()),
        }
        for name, j in judged.items()
    }
    base = judged[config.baseline]["score"].mean(axis=1)
    win_rates = {
        f"{name} vs {config.baseline}": ev.win_rate(j["score"].mean(axis=1), base)
        for name, j in judged.items()
        if name != config.baseline
    }
    points = [
        ev.FrontierPoint(kl=s["kl"], gold=float("nan"), proxy=s["score"], run=name, kind="policy")
        for name, s in summary.items()
    ]
    notes = {
        "prompts judged": len(base),
        "prompts left out (longer than prompt_length)": num_dropped,
        "samples per prompt": config.samples_per_prompt,
        "temperature": config.temperature,
        "judge": " + ".join(
            ([f"{config.rewards.model_weight} × reward model"] if config.reward else [])
            + [
                f"{w} × {f}"
                for f, w in zip(
                    config.rewards.functions,
                    config.rewards.weights or (1.0,) * len(config.rewards.functions),
                    strict=True,
                )
            ]
        ),
        "KL reference": config.reference or config.baseline,
        **{f"score, {k}": round(v["score"], 4) for k, v in summary.items()},
        **{f"KL, {k}": round(v["kl"], 4) for k, v in summary.items()},
    }
    ev.write_report(
        out,
        extra_points=points,
        win_rates=win_rates,
        title="rlhf_jax policy evaluation",
        notes=notes,
    )
    outcome = {
        "policies": summary,
        "win_rates": {k: w.as_dict() for k, w in win_rates.items()},
        "samples": {name: j["samples"] for name, j in judged.items()},
        "report": str(out / "report.md"),
    }
    (out / "summary.json").write_text(json.dumps(outcome, indent=2, default=float))
    return outcome
