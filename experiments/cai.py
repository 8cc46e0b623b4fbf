"""Constitutional AI and iterated RLHF on the synthetic task, judged by the gold reward.

    python experiments/cai.py            # the default sizes (README: "Constitutional AI")
    python experiments/cai.py --smoke    # seconds per arm, for tests

Arms (each the pipeline of `configs/synthetic.py:cai` or `:cai_raters`, on one pretrain/SFT):
    ai            RL-CAI: the feedback model labels every pair under correct, concise, original
                  (no rater label), and SL-CAI revises SFT samples
    ai_better     RL-CAI under the vague principle "better" alone, whose writers favour length
                  and parroting
    raters        the simulated raters label the same number of pairs (clean)
    raters_<bias> raters with the verbosity or sycophancy bias of `synthetic.scenarios`
    iterated      raters (verbosity), three rounds of a third of the labels each
    one_round     the same total labels in one round (the comparison for ``iterated``)
    iterated_lr   clean raters and PPO at 3e-4 (over-optimising): three rounds of a third of
                  the labels and of the PPO iterations each
    one_round_lr  the same prompts and iterations in one round
    iterated_lr_matched  iterated_lr with twice the prompts in later rounds, which brings its
                  labels level with one_round_lr's (later rounds lose more identical pairs)
    iterated_lr_sft  iterated_lr_matched's labels, but each round a new policy from SFT with
                  one_round_lr's schedule and PPO prompts (iteration.start=sft)
    one_round_nokl, iterated_nokl_sft  the same pair without a KL penalty (β = 0, 1e-4)
    one_round_few, iterated_few, iterated_few_sft  ~1,500 labels (3 × 512 prompts), the
                  budget at which one round passes its gold peak; continued or from SFT
    one_round_mid, iterated_mid_sft  ~6,000 labels (3 × 2,048 prompts)
    one_round_two, iterated_two_hot  two rounds of 1,536 prompts, the second's pairs sampled at
                  temperature 1.5
    one_round_weak, iterated_weak_sft  one_round_lr and iterated_lr_sft from a weak SFT policy
                  (an eighth of the SFT steps; its own pretrain and SFT)
Writes runs/cai/report.md and report.json: per arm the labels' agreement with gold, PPO's gold,
win rate over SFT and KL, which hacking monitors fired (the final policy's run), SL-CAI's drafts
against revisions, each iterated arm's per-round table, and each iterated arm against its
one-round arm (`PAIRS`): labels, held-out gold and KL, the proxy–gold gap on the final policy's
own samples, and gold at matched KL in training. Rerunning resumes: finished phases are
skipped.
"""

from rlhf_jax import interrupts

interrupts.install()

import json
import pathlib

from absl import app, flags

from rlhf_jax.synthetic import Pipeline, PipelineConfig
from rlhf_jax.synthetic import rounds as rounds_lib
from rlhf_jax.training.config import build, load_get_config

_SMOKE = flags.DEFINE_bool("smoke", False, "The smoke-sized pipeline.")
_ONLY = flags.DEFINE_list("arms", None, "Arms to run (default: all).")
_ROOT = flags.DEFINE_string("root", None, "Where the arms go (default: runs/cai[_smoke]).")


def _get_config():
    return load_get_config(
        pathlib.Path(__file__).resolve().parent.parent / "configs" / "synthetic.py"
    )


def arms(smoke: bool, root: str) -> dict:
    """Each arm's config dict (the first arm trains the shared pretrain and SFT)."""
    get = _get_config()
    tag = "smoke," if smoke else ""
    base = f"{root}/ai"
    out = {}

    def arm(name, variant, **changes):
        c = get(tag + variant)
        c.run_dir = f"{root}/{name}"
        if name != "ai":
            c.base_run_dir = base
        for key, value in changes.items():
            *parents, leaf = key.split(".")
            target = c
            for p in parents:
                target = target[p]
            target[leaf] = value
        out[name] = c

    arm("ai", "cai")
    arm("ai_better", "cai", **{"feedback.principles": ("better",), "feedback.revise_prompts": 0})
    arm("raters", "cai_raters")
    arm("raters_verbosity", "cai_raters,verbosity")
    arm("raters_sycophancy", "cai_raters,sycophancy")
    third = out["raters"].preferences.prompts // 3
    arm("iterated", "cai_raters,verbosity", **{"preferences.prompts": third,
        "iteration.rounds": 3, "iteration.prompts": third})  # fmt: skip
    arm("one_round", "cai_raters,verbosity", **{"preferences.prompts": 3 * third})
    # Over-optimisation by a higher PPO learning rate (clean raters): three rounds of 100
    # iterations on a third of the labels each, against one round of 300 on all of them.
    lr = {"ppo.policy_optimizer.learning_rate": 3e-4}
    iterations = out["raters"].train.ppo.iterations
    arm("iterated_lr", "cai_raters", **lr, **{"preferences.prompts": third,
        "iteration.rounds": 3, "iteration.prompts": third,
        "train.ppo.iterations": iterations // 2})  # fmt: skip
    arm("one_round_lr", "cai_raters", **lr, **{"preferences.prompts": 3 * third,
        "train.ppo.iterations": 3 * (iterations // 2)})  # fmt: skip
    # Later rounds sample from a sharper policy, so more of their pairs are identical and
    # dropped: twice the prompts per later round brings the labels level with one round's.
    arm("iterated_lr_matched", "cai_raters", **lr, **{"preferences.prompts": third,
        "iteration.rounds": 3, "iteration.prompts": 2 * third,
        "train.ppo.iterations": iterations // 2})  # fmt: skip
    # The same labels, each round a new policy from SFT with one_round_lr's schedule and
    # prompts (Bai et al. 2022's online iterations): the rounds differ only in their labels.
    arm("iterated_lr_sft", "cai_raters", **lr, **{"preferences.prompts": third,
        "iteration.rounds": 3, "iteration.prompts": 2 * third, "iteration.start": "sft",
        "iteration.rl_prompts": "train",
        "train.ppo.iterations": 3 * (iterations // 2)})  # fmt: skip
    # Over-optimisation without a KL penalty (β = 0; the study's proxies all pass their gold
    # peak so): one round, and rounds of new policies from SFT, on the same labels.
    nokl = {"ppo.kl_coef": 0.0}
    arm("one_round_nokl", "cai_raters", **nokl, **{"preferences.prompts": 3 * third})
    arm("iterated_nokl_sft", "cai_raters", **nokl, **{"preferences.prompts": third,
        "iteration.rounds": 3, "iteration.prompts": 2 * third, "iteration.start": "sft",
        "iteration.rl_prompts": "train"})  # fmt: skip
    # Over-optimisation by a small label budget (clean raters, PPO at 3e-4): a reward model on
    # ~1,500 labels of SFT samples is gamed within one round of 300 iterations. Three rounds of
    # a third of the prompts and iterations each relabel where the policy has moved. Reward
    # models train 200 steps a round (~8 epochs of the full budget).
    few = out["raters"].preferences.prompts // 32  # 512 prompts a round (8 in smoke)
    steps = out["raters"].train.reward.steps // 5  # 200 reward-model steps a round
    rm = {"train.reward.steps": steps, "train.reward.optimizer.warmup_steps": steps // 10,
          "iteration.reward_steps": steps}  # fmt: skip
    arm("iterated_few", "cai_raters", **lr, **rm, **{"preferences.prompts": few,
        "iteration.rounds": 3, "iteration.prompts": few,
        "train.ppo.iterations": iterations // 2})  # fmt: skip
    arm("one_round_few", "cai_raters", **lr, **rm, **{"preferences.prompts": 3 * few,
        "train.ppo.iterations": 3 * (iterations // 2)})  # fmt: skip
    # Each round a new policy from SFT, 300 iterations on round 1's PPO prompts, against a
    # reward model that has seen the earlier rounds' policies' samples (Bai et al. 2022).
    arm("iterated_few_sft", "cai_raters", **lr, **rm, **{"preferences.prompts": few,
        "iteration.rounds": 3, "iteration.prompts": few, "iteration.start": "sft",
        "iteration.rl_prompts": "train",
        "train.ppo.iterations": 3 * (iterations // 2)})  # fmt: skip
    # The same at four times the labels (2,048 prompts a round; one round gets a quarter of a
    # round more for the regressions the rounds add), reward models 400 steps a round.
    mid = out["raters"].preferences.prompts // 8
    rm = {"train.reward.steps": 2 * steps, "train.reward.optimizer.warmup_steps": steps // 5,
          "iteration.reward_steps": 2 * steps}  # fmt: skip
    arm("iterated_mid_sft", "cai_raters", **lr, **rm, **{"preferences.prompts": mid,
        "iteration.rounds": 3, "iteration.prompts": mid, "iteration.start": "sft",
        "iteration.rl_prompts": "train",
        "train.ppo.iterations": 3 * (iterations // 2)})  # fmt: skip
    arm("one_round_mid", "cai_raters", **lr, **rm, **{"preferences.prompts": 3 * mid + mid // 4,
        "train.ppo.iterations": 3 * (iterations // 2)})  # fmt: skip
    # Two rounds of 1,536 prompts, the second's pairs sampled at temperature 1.5 (a sharpened
    # policy's pairs at 1 are often identical), against one round on 3,328 prompts.
    rm = {"train.reward.steps": steps, "train.reward.optimizer.warmup_steps": steps // 10,
          "iteration.reward_steps": steps}  # fmt: skip
    arm("iterated_two_hot", "cai_raters", **lr, **rm, **{"preferences.prompts": 3 * few,
        "iteration.rounds": 2, "iteration.prompts": 3 * few, "iteration.start": "sft",
        "iteration.rl_prompts": "train", "iteration.temperature": 1.5,
        "train.ppo.iterations": 3 * (iterations // 2)})  # fmt: skip
    arm("one_round_two", "cai_raters", **lr, **rm, **{"preferences.prompts": 6 * few + few // 2,
        "train.ppo.iterations": 3 * (iterations // 2)})  # fmt: skip
    # A weak SFT policy (an eighth of the SFT steps) whose samples rarely reach the answers RL
    # finds, so one round's reward model must extrapolate there; its own pretrain and SFT.
    sft_steps = out["raters"].train.sft.steps // 8
    weak = {"train.sft.steps": sft_steps,
            "train.sft.optimizer.warmup_steps": max(sft_steps // 10, 1)}  # fmt: skip
    arm("one_round_weak", "cai_raters", **lr, **weak, **{"preferences.prompts": 3 * third,
        "train.ppo.iterations": 3 * (iterations // 2)})  # fmt: skip
    out["one_round_weak"].base_run_dir = None
    arm("iterated_weak_sft", "cai_raters", **lr, **weak, **{"preferences.prompts": third,
        "iteration.rounds": 3, "iteration.prompts": 2 * third, "iteration.start": "sft",
        "iteration.rl_prompts": "train",
        "train.ppo.iterations": 3 * (iterations // 2)})  # fmt: skip
    out["iterated_weak_sft"].base_run_dir = f"{root}/one_round_weak"
    return out


# Each iterated arm and the one-round arm with the same labels it is judged against.
PAIRS = {"iterated": "one_round", "iterated_lr": "one_round_lr",
         "iterated_lr_matched": "one_round_lr", "iterated_lr_sft": "one_round_lr",
         "iterated_nokl_sft": "one_round_nokl", "iterated_few": "one_round_few",
         "iterated_few_sft": "one_round_few", "iterated_mid_sft": "one_round_mid",
         "iterated_two_hot": "one_round_two", "iterated_weak_sft": "one_round_weak"}  # fmt: skip


def one_round_stats(pipeline) -> None:
    """A one-round arm's round-1 statistics, as an iterated arm's rounds report them (its
    reward model's proxy–gold gap on its own policy's samples); kept in rounds/round_1."""
    labels = json.loads(pipeline.path("preferences", "summary.json").read_text())["pairs"]
    rounds_lib.round_stats(pipeline, 1, pipeline.artifact("ppo"), pipeline.artifact("reward"),
                           [], labels)  # fmt: skip


def compare(root: pathlib.Path, table: dict) -> dict:
    """Per iterated arm beside its one-round arm: labels, held-out gold and KL, the proxy–gold
    gap on the final policy's samples, and gold at matched KL off the training histories."""
    out = {}
    for it, one in PAIRS.items():
        if it not in table or one not in table or "rounds" not in table[it]:
            continue
        stats = _read(root / one / "rounds" / "round_1" / "stats.json") or {}
        last = table[it]["rounds"][-1]
        out[it] = {"one_round": one, "labels": last["labels"],
                   "one_round_labels": table[one]["pairs"],
                   "gold": table[it]["gold_ppo"], "kl": table[it]["kl_ppo"],
                   "one_round_gold": table[one]["gold_ppo"], "one_round_kl": table[one]["kl_ppo"],
                   "gap_by_round": [r["proxy_gold_gap"] for r in table[it]["rounds"]],
                   "one_round_gap": stats.get("proxy_gold_gap"),
                   "matched_kl": rounds_lib.matched_kl(root / it, root / one)}  # fmt: skip
    return out


def _read(path: pathlib.Path):
    return json.loads(path.read_text()) if path.exists() else None


def summarise(root: pathlib.Path, names) -> dict:
    table = {}
    for name in names:
        d = root / name
        prefs, ev = (
            _read(d / "preferences" / "summary.json"),
            _read(d / "evaluate" / "summary.json"),
        )
        if prefs is None or ev is None:
            continue
        policies, wins = ev["policies"], ev["win_rates"]
        final = "rounds" if "rounds" in policies else "ppo"
        # The final policy's run: the last round's PPO where there are rounds.
        later = rounds_lib.round_dirs(d)
        ppo_dir = later[-1][1] / "ppo" if final == "rounds" and later else d / "ppo"
        monitors = _read(ppo_dir / "monitors.json") or {"monitors": {}}
        row = {
            "labels": prefs["labels"],
            "pairs": prefs["pairs"],
            "label_agreement_with_gold": prefs["label_agreement_with_gold"],
            "gold_sft": policies["sft"]["gold"],
            "gold_ppo": policies[final]["gold"],
            "kl_ppo": policies[final]["kl"],
            "length_sft": policies["sft"]["length"],
            "length_ppo": policies[final]["length"],
            "echo_ppo": policies[final]["echo"],
            "win_rate_vs_sft": wins[f"{final} vs sft"]["rate"],
            "gold_dpo": policies.get("dpo", {}).get("gold"),
            "monitors_fired": sorted(monitors["monitors"]),
        }
        for key in ("order_agreement", "principle_agreement", "position_bias"):
            if key in prefs:
                row[key] = prefs[key]
        sl = _read(d / "sl_cai" / "summary.json")
        if sl is not None:
            row["sl_cai_gold_drafts"] = sl["gold_drafts"]
            row["sl_cai_gold_revisions"] = sl["gold_revisions"]
            row["gold_sl_cai"] = policies["sl_cai"]["gold"]
            row["sl_cai_win_rate_vs_sft"] = wins["sl_cai vs sft"]["rate"]
        rounds = _read(d / "rounds" / "summary.json")
        if rounds is not None:
            row["rounds"] = rounds["rounds"]
        table[name] = row
    return table


def comparison_markdown(pairs: dict) -> str:
    """The iterated arms against one round: held out, then at matched KL in training."""
    lines = ["| iterated arm | vs | labels | gold, KL (held out) | one round's | proxy–gold gap "
             "by round | one round's | training: final gold at KL | one round's best there |",
             "|---" * 9 + "|"]  # fmt: skip
    for name, p in pairs.items():
        m = p["matched_kl"]
        gap = "—" if p["one_round_gap"] is None else f"{p['one_round_gap']:.3f}"
        lines.append(
            f"| {name} | {p['one_round']} | {p['labels']} vs {p['one_round_labels']} | "
            f"{p['gold']:.3f}, {p['kl']:.2f} | {p['one_round_gold']:.3f}, {p['one_round_kl']:.2f}"
            f" | {', '.join(f'{g:.3f}' for g in p['gap_by_round'])} | {gap} | "
            f"{m['iterated']['gold']:.3f} at {m['kl']:.2f} | {m['one_round_gold_at_kl']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def markdown(table: dict) -> str:
    cols = ("labels", "pairs", "label_agreement_with_gold", "gold_sft", "gold_ppo", "kl_ppo",
            "win_rate_vs_sft", "length_ppo", "echo_ppo", "monitors_fired")  # fmt: skip
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else ", ".join(v) if isinstance(v, list) \
        else str(v)  # fmt: skip
    lines = ["| arm | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(fmt(row.get(c)) for c in cols) + " |")
    for name, row in table.items():
        if "sl_cai_gold_drafts" in row:
            lines += ["", f"SL-CAI ({name}): gold of drafts {row['sl_cai_gold_drafts']:.3f}, of "
                      f"revisions {row['sl_cai_gold_revisions']:.3f}; SFT on the revisions: gold "
                      f"{row['gold_sl_cai']:.3f} (SFT {row['gold_sft']:.3f}), win rate over SFT "
                      f"{row['sl_cai_win_rate_vs_sft']:.3f}"]  # fmt: skip
        if "rounds" in row:
            lines += ["", f"Rounds ({name}):", "", "| round | labels | gold | KL | RM accuracy on "
                      "the policy's samples | proxy–gold gap | regressions |", "|---|---|---|---|"
                      "---|---|---|"]  # fmt: skip
            for r in row["rounds"]:
                lines.append(f"| {r['round']} | {r['labels']} | {r['gold']:.3f} | {r['kl']:.3f} | "
                             f"{r['rm_accuracy_on_policy']:.3f} | {r['proxy_gold_gap']:.3f} | "
                             f"{r['regressions']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    root = pathlib.Path(_ROOT.value or ("runs/cai_smoke" if _SMOKE.value else "runs/cai"))
    configs = arms(_SMOKE.value, str(root))
    names = _ONLY.value or list(configs)
    for name in names:
        print(f"[cai] arm {name}")
        pipeline = Pipeline(build(PipelineConfig, configs[name].to_dict()))
        result = pipeline.run()
        if result["status"] == "interrupted":
            print("[cai] interrupted; rerun to resume")
            return
        if name in PAIRS.values():
            one_round_stats(pipeline)
    table = summarise(root, list(configs))
    pairs = compare(root, table)
    (root / "report.json").write_text(
        json.dumps({**table, "iterated_vs_one_round": pairs}, indent=2, default=float)
    )
    (root / "report.md").write_text(
        "# Constitutional AI on the synthetic task\n\n" + markdown(table)
        + "\n## Iterated RLHF against one round\n\n" + comparison_markdown(pairs)
    )  # fmt: skip
    print((root / "report.md").read_text())


if __name__ == "__main__":
    app.run(main)
