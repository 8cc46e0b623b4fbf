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
Writes runs/cai/report.md and report.json: per arm the labels' agreement with gold, PPO's gold,
win rate over SFT and KL, which hacking monitors fired, SL-CAI's drafts against revisions, and
the iterated arm's per-round table. Rerunning resumes: finished phases are skipped.
"""

from rlhf_jax import interrupts

interrupts.install()

import json
import pathlib

from absl import app, flags

from rlhf_jax.synthetic import Pipeline, PipelineConfig
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
        monitors = _read(d / "ppo" / "monitors.json") or {"monitors": {}}
        policies, wins = ev["policies"], ev["win_rates"]
        final = "rounds" if "rounds" in policies else "ppo"
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
        result = Pipeline(build(PipelineConfig, configs[name].to_dict())).run()
        if result["status"] == "interrupted":
            print("[cai] interrupted; rerun to resume")
            return
    table = summarise(root, list(configs))
    (root / "report.json").write_text(json.dumps(table, indent=2, default=float))
    (root / "report.md").write_text(
        "# Constitutional AI on the synthetic task\n\n" + markdown(table)
    )
    print((root / "report.md").read_text())


if __name__ == "__main__":
    app.run(main)
