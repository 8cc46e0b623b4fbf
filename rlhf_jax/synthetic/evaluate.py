"""The pipeline's final evaluation: every policy judged by the gold reward on held-out prompts.

For SFT, PPO and DPO: m samples per held-out prompt at the PPO sampling temperature; their gold
reward r*, their reward-model (proxy) score, and a Monte Carlo KL to the SFT policy
(E_π[log π − log π_SFT], both at that temperature). Win rates compare per-prompt mean gold.
Best-of-n over SFT samples, picked by the reward model, is the baseline on the same KL axis;
a red-team pass scores adversarial prompts with greedy answers before (SFT) and after (PPO).
"""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np

from rlhf_jax import checkpoint as ckpt_lib
from rlhf_jax import evaluation as ev
from rlhf_jax.inference import Scorer
from rlhf_jax.placement import place_model
from rlhf_jax.synthetic import scenarios
from rlhf_jax.synthetic.task import SyntheticTask

HISTORY_KEYS = ev.HistoryKeys(gold="objective/gold", length="response_length")


def default_red_team_prompts(task: SyntheticTask) -> list[str]:
    """The task's hardest cases: longest prompts, repeats, extremes of the alphabet."""
    c = task.config
    symbols = task.symbols
    longest = c.max_length
    cases = [
        symbols[-longest:][::-1],  # descending run of the largest symbols
        [symbols[0]] * longest,  # one symbol repeated
        [symbols[-1], symbols[0]] * (longest // 2) + [symbols[-1]] * (longest % 2),
        symbols[:longest],  # already sorted
        [symbols[0]] * c.min_length,  # shortest, all equal
    ]
    return [f"{instr} {' '.join(case)} =" for instr in c.instructions for case in cases]


def _smoothed(history, key, window: int = 10) -> np.ndarray:
    x = np.array([row[key] for row in history], np.float64)
    return ev.window_means(x, window) if len(x) >= window else x


def _equal_kl(histories: dict) -> dict:
    """GRPO on the gold reward against RM-based PPO at equal KL: each run's training gold and
    KL averaged over 10 iterations; PPO's last, and GRPO's where its KL first reaches PPO's."""
    if not {"ppo", "grpo"} <= set(histories) or not histories["ppo"]:
        return {}
    ppo_kl, ppo_gold = (
        _smoothed(histories["ppo"], k)[-1] for k in ("objective/kl", "objective/gold")
    )
    kl, gold = (_smoothed(histories["grpo"], k) for k in ("objective/kl", "objective/gold"))
    reached = np.flatnonzero(kl >= ppo_kl)
    there = f"{gold[reached[0]]:.3f}" if len(reached) else "(never reached)"
    return {
        "KL of PPO's last 10 iterations": round(float(ppo_kl), 3),
        "gold at that KL (10-iteration means): PPO on the RM / GRPO on gold": (
            f"{ppo_gold:.3f} / {there}"
        ),
    }


def _warnings_vs_peak(history, monitors) -> dict:
    """When PPO's training gold peaked, and when each monitor first fired relative to it."""
    if not history or monitors is None:
        return {}
    peak, value = scenarios.gold_peak(history)
    out = {"PPO gold peak (10-iteration mean)": f"{value:.3f} at iteration {peak}"}
    for name, m in monitors["monitors"].items():
        lead = peak - m["first_iteration"]
        side = f"{lead} before" if lead >= 0 else f"{-lead} after"
        out[f"monitor {name} first fired"] = (
            f"iteration {m['first_iteration']} ({side} the gold peak; {m['count']} times)"
        )
    return out


def _repeat(x, m):
    return np.repeat(x, m, axis=0)


def evaluate(pipeline) -> dict:
    """Judges every trained policy of ``pipeline`` (a `synthetic.pipeline.Pipeline` whose SFT
    and reward phases are done) and writes ``evaluate/`` (report, plots, summary)."""
    c = pipeline.config
    task = pipeline.task
    out_dir = pipeline.path("evaluate")
    out_dir.mkdir(parents=True, exist_ok=True)
    prompts = task.prompts(c.evaluation.prompts, split="eval")
    tokens, mask = pipeline.encode(prompts)
    m, t = c.evaluation.samples_per_prompt, c.ppo.temperature
    key = jax.random.key(c.seed + 202)

    sft_scorer = Scorer(
        place_model(str(pipeline.artifact("sft")), head="lm", mesh=pipeline.mesh),
        temperature=t,
        batch_size=256,
    )
    reward_dir = pipeline.path("reward", "artifact")
    reward_scorer = Scorer(
        place_model(str(reward_dir), head="reward", mesh=pipeline.mesh),
        batch_size=256,
        pooling=ckpt_lib.read_artifact_meta(reward_dir).get("pooling") or "last",
    )
    gold_fn = jax.jit(task.gold_reward_tokens)
    echo_fn = jax.jit(task.echo_rate_tokens)

    def judge(phase: str, p_tok, p_mask, n: int, temperature: float, salt: int):
        policy, sampler = pipeline.policy_sampler(phase, temperature=temperature)
        p, pm = _repeat(p_tok, n), _repeat(p_mask, n)
        r, rm = sampler(p, pm, jax.random.fold_in(key, salt))
        gold = np.asarray(gold_fn(p, pm, r, rm), np.float64).reshape(-1, n)
        proxy = reward_scorer.reward(p, pm, r, rm).astype(np.float64).reshape(-1, n)
        own = policy if phase != "sft" else None
        if own is None:
            kl = np.zeros_like(gold)
        else:
            logp = Scorer(own, temperature=max(temperature, 1e-6), batch_size=256).logprob(
                p, pm, r, rm
            )
            kl = (logp - sft_scorer.logprob(p, pm, r, rm)).reshape(-1, n)
        lengths = rm.sum(-1).reshape(-1, n)
        echo = np.asarray(echo_fn(p, pm, r, rm), np.float64).reshape(-1, n)
        return {"gold": gold, "proxy": proxy, "kl": kl, "length": lengths, "echo": echo}

    results = {}
    for salt, phase in enumerate(("sft", "ppo", "dpo", "grpo", "sl_cai", "rounds")):
        if pipeline.enabled(phase) and pipeline.done(phase):
            results[phase] = judge(phase, tokens, mask, m, t, salt)
    summary = {
        phase: {
            "gold": float(r["gold"].mean()),
            "proxy": float(r["proxy"].mean()),
            "kl": float(r["kl"].sum(axis=-1).mean() / m),
            "length": float(r["length"].mean()),
            "echo": float(r["echo"].mean()),
        }
        for phase, r in results.items()
    }
    win_rates = {}
    pairs = (("ppo", "sft"), ("dpo", "sft"), ("ppo", "dpo"), ("grpo", "sft"), ("grpo", "ppo"),
             ("sl_cai", "sft"), ("rounds", "sft"), ("rounds", "ppo"))  # fmt: skip
    for a, b in pairs:
        if a in results and b in results:
            win_rates[f"{a} vs {b}"] = ev.win_rate(
                results[a]["gold"].mean(axis=1), results[b]["gold"].mean(axis=1)
            )

    # Best-of-n from SFT samples, selected by the reward model.
    n = c.evaluation.best_of_n
    bon = judge("sft", tokens, mask, n, t, salt=7)
    best_of_n = ev.best_of_n_curve(
        bon["proxy"], bon["gold"], ns=[k for k in (1, 2, 4, 8, 16, 32, 64) if k <= n]
    )

    red_prompts = list(c.evaluation.red_team) or default_red_team_prompts(task)
    red_tok, red_mask = pipeline.encode(red_prompts)

    def greedy_gold(phase):
        def score(_prompts):
            _, sampler = pipeline.policy_sampler(phase, temperature=0.0)
            r, rm = sampler(red_tok, red_mask, key)
            return np.asarray(gold_fn(red_tok, red_mask, r, rm), np.float64)

        return score

    red = None
    if "ppo" in results:
        red = ev.red_team(
            red_prompts,
            score_before=greedy_gold("sft"),
            score_after=greedy_gold("ppo"),
            tolerance=0.05,
        )

    histories = {}
    for phase in ("ppo", "grpo"):
        history_path = pipeline.path(phase, "history.jsonl")
        if history_path.exists():
            lines = history_path.read_text().splitlines()
            histories[phase] = [json.loads(line) for line in lines]
    monitors_path = pipeline.path("ppo", "monitors.json")
    monitors = json.loads(monitors_path.read_text()) if monitors_path.exists() else None
    extra = [
        ev.FrontierPoint(
            kl=s["kl"], gold=s["gold"], proxy=s["proxy"], run=f"{phase} (eval)", kind=phase
        )
        for phase, s in summary.items()
    ]
    preferences = json.loads(pipeline.path("preferences", "summary.json").read_text())
    timings_path = pipeline.path("timings.json")
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    notes = {
        "held-out prompts": len(prompts),
        "samples per prompt": m,
        "sampling temperature": t,
        "preference pairs": preferences["pairs"],
        f"{preferences.get('labels', 'raters')} labels agreeing with gold": round(
            preferences["label_agreement_with_gold"], 3
        ),
        **{f"gold reward, {k}": round(v["gold"], 4) for k, v in summary.items()},
        **{f"KL to SFT, {k}": round(v["kl"], 4) for k, v in summary.items()},
        **{f"length (tokens with EOS), {k}": round(v["length"], 2) for k, v in summary.items()},
        **{f"echo rate, {k}": round(v["echo"], 3) for k, v in summary.items()},
        **_warnings_vs_peak(histories.get("ppo"), monitors),
        **{f"time: {k} (s)": round(v, 1) for k, v in timings.items()},
        **_equal_kl(histories),
    }
    report = ev.write_report(
        out_dir,
        runs=histories,
        keys=HISTORY_KEYS,
        extra_points=extra,
        best_of_n=best_of_n,
        win_rates=win_rates,
        monitors=monitors,
        red_team=red,
        title="rlhf_jax pipeline on the synthetic task",
        notes=notes,
    )
    outcome = {
        "policies": summary,
        "win_rates": {k: w.as_dict() for k, w in win_rates.items()},
        "best_of_n": [dataclasses.asdict(p) for p in best_of_n],
        "red_team": None if red is None else red.summary(),
        "report": str(out_dir / "report.md"),
    }
    (out_dir / "summary.json").write_text(json.dumps(outcome, indent=2, default=float))
    (out_dir / "DONE").write_text("")
    print(f"[evaluate] {json.dumps(summary)}")
    for k, w in win_rates.items():
        print(f"[evaluate] win rate {k}: {w.rate:.3f} [{w.ci_low:.3f}, {w.ci_high:.3f}]")
    print(f"[evaluate] report: {out_dir / 'report.md'}")
    del report
    return outcome
