"""Iterated RLHF on the synthetic task: rounds that feed the policy's new samples and its
failures back into the preference data (``PipelineConfig.iteration``).

Round 1 is the pipeline's own preferences → reward → PPO. Each later round r, in
``<run_dir>/rounds/round_<r>/``:

1. **preferences**: pairs sampled from the current policy (round r − 1's PPO; at
   ``temperature`` if set) on fresh train prompts plus round r − 1's red-team regressions,
   labelled as round 1's are (raters or AI);
2. **reward**: the reward model trained on every label so far, from round r − 1's reward model;
3. **ppo**: PPO against the new reward model, continuing the current policy (``start=
   "previous"``) or a new policy from SFT (``"sft"``); the KL reference stays the SFT policy
   (``reference="sft"``) or moves to round r − 1's policy (``"previous"``); on the round's
   preference prompts (``rl_prompts="round"``) or round 1's PPO prompts plus the regressions
   (``"train"``);
4. **probe**: probe prompts answered greedily by round r − 1's and round r's policies, judged
   by gold; the prompts whose gold dropped (`evaluation.red_team`) join round r + 1's prompts;
5. **stats**: on held-out prompts, the round's policy's gold, proxy score, KL to SFT, and how
   well the round's reward model ranks pairs of the policy's own samples by gold (the
   proxy–gold gap where the policy now is: 1 − that accuracy).

Every step leaves its artifact or a DONE file, so an interrupted run resumes mid-round.
``rounds/summary.json`` and ``rounds/report.md`` hold the per-round table, ``rounds.png`` its
plot. ``trajectory`` joins the rounds' PPO histories into one, and ``matched_kl`` compares an
iterated run's final gold with another run's gold at the same KL to SFT.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
import numpy as np

from rlhf_jax import checkpoint as ckpt_lib
from rlhf_jax import evaluation as ev
from rlhf_jax.inference import Scorer
from rlhf_jax.placement import ModelSource, place_model
from rlhf_jax.synthetic import collect
from rlhf_jax.synthetic import task as task_lib
from rlhf_jax.synthetic.evaluate import HISTORY_KEYS, default_red_team_prompts
from rlhf_jax.training import reward as reward_lib

STATS = ("gold", "proxy", "kl", "length", "rm_accuracy_on_policy", "proxy_gold_gap",
         "regressions", "labels")  # fmt: skip


def run_rounds(pipeline) -> dict:
    c = pipeline.config
    it = c.iteration
    root = pipeline.path("rounds")
    root.mkdir(parents=True, exist_ok=True)
    policy, reward = pipeline.artifact("ppo"), pipeline.artifact("reward")
    label_files = [pipeline.path("data", "preferences.jsonl")]
    regressions = probe(pipeline, 1, pipeline.artifact("sft"), policy)
    table = [round_stats(pipeline, 1, policy, reward, regressions, len(_rows(label_files)))]
    n = it.prompts or c.preferences.prompts
    offset = c.preferences.prompts + c.feedback.revise_prompts  # prompts used before
    for r in range(2, it.rounds + 1):
        d = root / f"round_{r}"
        fresh = pipeline.task.prompts(offset + (r - 1) * n, split="train")[offset + (r - 2) * n :]
        prompts = _plus(fresh, regressions)
        data = d / "preferences.jsonl"
        if not (d / "preferences" / "DONE").exists():
            collect.collect_preferences(
                pipeline, str(policy), prompts, d / "preferences", data,
                seed=c.seed + 1000 * r, label_rng=np.random.default_rng([c.seed, 5, r]),
                temperature=it.temperature or None,
            )  # fmt: skip
        label_files.append(data)
        all_labels = d / "all_preferences.jsonl"  # deterministic: rewritten on every resume
        task_lib.write_jsonl(all_labels, _rows(label_files))
        stage = c.train.reward
        if it.reward_steps:
            stage = dataclasses.replace(stage, steps=it.reward_steps)
        reward_dir = d / "reward"
        if not ckpt_lib.artifact_exists(reward_dir / "artifact"):
            out = pipeline.run_stage(
                reward_lib.PHASE, str(reward_dir), stage, model=_source(pipeline, reward),
                data_path=str(all_labels), reward=c.reward,
            )  # fmt: skip
            if _interrupted(out):
                return out
        previous, sft = policy, pipeline.artifact("sft")
        rl_stage = it.ppo or c.train.ppo
        rl_prompts = prompts
        if it.rl_prompts == "train":
            train = pipeline.task.prompts(c.train.ppo.prompts, split="train")  # round 1's
            rl_prompts = _plus(train, regressions)
        out = pipeline.run_rl(
            str(d / "ppo"), rl_stage, c.ppo,
            reward=_source(pipeline, reward_dir / "artifact"),
            policy=_source(pipeline, previous if it.start == "previous" else sft),
            reference=_source(pipeline, sft if it.reference == "sft" else previous),
            prompts=rl_prompts,
        )  # fmt: skip
        if _interrupted(out):
            return out
        policy, reward = d / "ppo" / "artifact", reward_dir / "artifact"
        regressions = probe(pipeline, r, previous, policy)
        labels = len(_rows(label_files))
        table.append(round_stats(pipeline, r, policy, reward, regressions, labels))
    summary = {"rounds": table, "final_policy": str(policy), "reference": it.reference,
               "start": it.start, "rl_prompts": it.rl_prompts}  # fmt: skip
    (root / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    _report(root, table)
    (root / "DONE").write_text("")
    return summary


def _plus(prompts: list[str], more: list[str]) -> list[str]:
    """``prompts`` then those of ``more`` not among them."""
    seen = set(prompts)
    return prompts + [p for p in more if p not in seen]


def round_dirs(run_dir) -> list[tuple[int, pathlib.Path]]:
    """(r, ``<run_dir>/rounds/round_<r>``) of every round directory there is, by round number
    (round 1's holds its probe and statistics; its training is the pipeline's own)."""
    dirs = pathlib.Path(run_dir).glob("rounds/round_*")
    return sorted((int(d.name.removeprefix("round_")), d) for d in dirs if d.is_dir())


def trajectory(run_dir) -> list[dict]:
    """A pipeline run's PPO history across its rounds: round 1's ``ppo/history.jsonl``, then
    each later round's, every row with its ``round`` and ``iteration`` counted across rounds."""
    root = pathlib.Path(run_dir)
    first = root / "ppo" / "history.jsonl"
    if not first.exists():
        raise ValueError(f"{first} does not exist: {root} has no PPO history")
    later = [(r, d / "ppo" / "history.jsonl") for r, d in round_dirs(root) if r > 1]
    rows = []
    for r, path in [(1, first), *[(r, p) for r, p in later if p.exists()]]:
        for line in path.read_text().splitlines():
            if line.strip():
                rows.append({**json.loads(line), "round": r, "iteration": len(rows)})
    return rows


def matched_kl(iterated_dir, one_round_dir, *, window: int = 10) -> dict:
    """An iterated run's final gold against a one-round run's at the same KL to SFT, both read
    off their PPO training histories in means over ``window`` consecutive iterations (whole
    windows only): the iterated run's last mean gives the KL, and the one-round run's best mean
    gold within that KL is compared (`evaluation.reward_at_kl`; NaN if it was never that close
    to SFT). Also each run's final point and gold peak. Where each round trains a new policy
    from SFT (``start="sft"``), the iterated run's final point and peak are its last round's.
    The iterated run's rounds must be finished with SFT as their KL reference; the one-round
    run's reference is its own start, SFT."""
    summary_path = pathlib.Path(iterated_dir) / "rounds" / "summary.json"
    if not summary_path.exists():
        raise ValueError(f"{summary_path} does not exist: {iterated_dir} has no finished rounds")
    summary = json.loads(summary_path.read_text())
    if summary["reference"] != "sft":
        raise ValueError(f"{summary_path}: its rounds' KL reference is not SFT; KLs do not compare")
    keys, out, columns = HISTORY_KEYS, {"window": window}, {}
    for name, run_dir in (("iterated", iterated_dir), ("one_round", one_round_dir)):
        rows = trajectory(run_dir)
        if name == "iterated" and summary.get("start") == "sft":
            rows = [row for row in rows if row["round"] == rows[-1]["round"]]
        kl, gold = ev.column(rows, keys.kl), ev.column(rows, keys.gold)
        if not (np.isfinite(kl).all() and np.isfinite(gold).all()):
            raise ValueError(f"{run_dir}: its PPO history lacks KL or gold on some iterations")
        kl_w, gold_w = ev.window_means(kl, window), ev.window_means(gold, window)
        peak = int(np.argmax(gold_w))
        out[name] = {"iterations": len(rows), "kl": float(kl_w[-1]), "gold": float(gold_w[-1]),
                     "peak_gold": float(gold_w[peak]), "kl_at_peak": float(kl_w[peak])}  # fmt: skip
        columns[name] = kl_w, gold_w
    out["kl"] = out["iterated"]["kl"]
    out["one_round_gold_at_kl"] = ev.reward_at_kl(*columns["one_round"], out["kl"])
    return out


def _source(pipeline, artifact) -> ModelSource:
    return ModelSource(artifact=str(artifact), tokenizer=str(pipeline.tokenizer_dir))


def _interrupted(out) -> bool:
    return isinstance(out, dict) and out.get("status") == "interrupted"


def _rows(paths) -> list[dict]:
    return [json.loads(line) for p in paths for line in open(p, encoding="utf-8") if line.strip()]


def probe(pipeline, r: int, before, after) -> list[str]:
    """The probe prompts (the red-team set and ``probe_prompts`` train prompts no round
    collects pairs on) whose greedy answer's gold dropped from policy ``before`` to
    ``after``; kept in round_<r>/probe.json."""
    c = pipeline.config
    path = pipeline.path("rounds", f"round_{r}", "probe.json")
    if path.exists():
        return json.loads(path.read_text())["regressions"]
    # The red-team set, and train prompts after every round's preference prompts.
    it = c.iteration
    used = c.preferences.prompts + c.feedback.revise_prompts
    used += (it.rounds - 1) * (it.prompts or c.preferences.prompts)
    prompts = list(c.evaluation.red_team) or default_red_team_prompts(pipeline.task)
    prompts += pipeline.task.prompts(used + it.probe_prompts, split="train")[used:]
    tokens, mask = pipeline.encode(prompts)
    gold_fn = jax.jit(pipeline.task.gold_reward_tokens)

    def greedy_gold(artifact):
        def score(_prompts):
            _, sampler = pipeline.policy_sampler(str(artifact), temperature=0.0)
            resp, resp_mask = sampler(tokens, mask, jax.random.key(c.seed))
            return np.asarray(gold_fn(tokens, mask, resp, resp_mask), np.float64)

        return score

    result = ev.red_team(
        prompts,
        score_before=greedy_gold(before),
        score_after=greedy_gold(after),
        tolerance=c.iteration.tolerance,
    )
    regressions = [g.prompt for g in result.regressions]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"summary": result.summary(), "regressions": regressions}))
    return regressions


def round_stats(pipeline, r: int, policy, reward, regressions, labels: int) -> dict:
    """The round's policy on held-out prompts (module doc, step 5); cached in stats.json."""
    c = pipeline.config
    path = pipeline.path("rounds", f"round_{r}", "stats.json")
    if path.exists():
        return json.loads(path.read_text())
    prompts = pipeline.task.prompts(c.iteration.stats_prompts, split="eval")
    tokens, mask = pipeline.encode(prompts)
    p, pm = np.repeat(tokens, 2, axis=0), np.repeat(mask, 2, axis=0)
    t = c.ppo.temperature
    own, sampler = pipeline.policy_sampler(str(policy), temperature=t)
    resp, rm = sampler(p, pm, jax.random.key(c.seed + 404))
    gold = np.asarray(jax.jit(pipeline.task.gold_reward_tokens)(p, pm, resp, rm), np.float64)
    scorer = Scorer(
        place_model(str(reward), head="reward", mesh=pipeline.mesh),
        batch_size=256,
        pooling=ckpt_lib.read_artifact_meta(reward).get("pooling") or "last",
    )
    proxy = scorer.reward(p, pm, resp, rm).astype(np.float64)
    sft = Scorer(place_model(str(pipeline.artifact("sft")), head="lm", mesh=pipeline.mesh),
                 temperature=t, batch_size=256)  # fmt: skip
    logp = Scorer(own, temperature=t, batch_size=256).logprob(p, pm, resp, rm)
    kl = float(np.mean(logp - sft.logprob(p, pm, resp, rm)))
    g2, s2 = gold.reshape(-1, 2), proxy.reshape(-1, 2)
    distinct = g2[:, 0] != g2[:, 1]
    agree = (s2[distinct, 0] > s2[distinct, 1]) == (g2[distinct, 0] > g2[distinct, 1])
    accuracy = float(np.mean(agree)) if agree.size else float("nan")
    stats = {
        "round": r,
        "gold": float(gold.mean()),
        "proxy": float(proxy.mean()),
        "kl": kl,
        "length": float(rm.sum(-1).mean()),
        "rm_accuracy_on_policy": accuracy,
        "proxy_gold_gap": 1.0 - accuracy,
        "regressions": len(regressions),
        "labels": labels,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stats))
    print(f"[rounds] {json.dumps(stats)}")
    return stats


def _report(root, table) -> None:
    lines = ["# Iterated RLHF, per round", "", "| round | " + " | ".join(STATS) + " |",
             "|" + "---|" * (len(STATS) + 1)]  # fmt: skip
    for row in table:
        cells = [f"{row[k]:.3f}" if isinstance(row[k], float) else str(row[k]) for k in STATS]
        lines.append(f"| {row['round']} | " + " | ".join(cells) + " |")
    (root / "report.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    x = [row["round"] for row in table]
    for ax, key in zip(axes, ("gold", "proxy_gold_gap", "kl"), strict=True):
        ax.plot(x, [row[key] for row in table], marker="o")
        ax.set_xlabel("round")
        ax.set_title(key)
    fig.tight_layout()
    fig.savefig(root / "rounds.png", dpi=100)
    plt.close(fig)
