"""(slow) Constitutional AI's claims on the synthetic task, judged by gold: `experiments/cai.py`
on the arms the claims read (~35 min on 2 cores), then its report."""

import json
import subprocess
import sys

import pytest
from test_pipeline import ROOT


@pytest.mark.slow
def test_cai_arms_against_gold(tmp_path):
    arms = "ai,raters,raters_verbosity,one_round_lr,iterated_lr_sft"
    subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "cai.py"), f"--root={tmp_path}",
         f"--arms={arms}"],
        check=True, cwd=tmp_path,
    )  # fmt: skip
    t = json.loads((tmp_path / "report.json").read_text())
    ai, raters, verbose = t["ai"], t["raters"], t["raters_verbosity"]
    # RL-CAI with no rater label beats SFT by gold on >= 75% of held-out prompts (measured
    # 0.945), beside rater RLHF on the same number of labels (0.992).
    assert ai["labels"] == "ai" and ai["pairs"] == raters["pairs"]
    assert ai["win_rate_vs_sft"] >= 0.75 and ai["gold_ppo"] > ai["gold_sft"] + 0.2
    assert 0.6 < ai["label_agreement_with_gold"] < raters["label_agreement_with_gold"]
    # Length-biased raters: their reward model is gamed (longer answers, length monitors fire);
    # the constitution's judge does not lengthen and its length monitors stay quiet.
    assert verbose["length_ppo"] > 1.2 * verbose["length_sft"]
    assert ai["length_ppo"] < 1.05 * ai["length_sft"]
    assert {"length_correlation", "length_drift"} <= set(verbose["monitors_fired"])
    assert not {"length_correlation", "length_drift"} & set(ai["monitors_fired"])
    assert ai["gold_ppo"] > verbose["gold_ppo"] + 0.2
    # SL-CAI: revisions beat their drafts by gold, and SFT on them raises gold.
    assert ai["sl_cai_gold_revisions"] > ai["sl_cai_gold_drafts"] + 0.2
    assert ai["gold_sl_cai"] > ai["gold_sft"] + 0.2 and ai["sl_cai_win_rate_vs_sft"] >= 0.75
    # Iterated RLHF, clean raters, PPO at 3e-4, each round a new policy from SFT on the labels
    # so far: the proxy–gold gap on the policy's own samples shrinks every round (measured
    # 0.296, 0.121, 0.085) and ends below one round's on its own policy (0.253), at the same
    # number of labels (16,319 against 15,752). Not asserted, because it is not met: final gold
    # beating one round's at matched KL (0.786 against 0.819 in training; held out 0.781 at KL
    # 2.46 against 0.806 at 2.33).
    pair = t["iterated_vs_one_round"]["iterated_lr_sft"]
    gaps = pair["gap_by_round"]
    assert gaps[2] < gaps[1] < gaps[0] and gaps[0] - gaps[2] > 0.1
    assert gaps[2] < pair["one_round_gap"] - 0.1
    assert abs(pair["labels"] - pair["one_round_labels"]) < 0.05 * pair["one_round_labels"]
