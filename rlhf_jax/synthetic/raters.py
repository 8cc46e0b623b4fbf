"""Simulated raters for the synthetic task: Bradley–Terry labels from the gold reward, with the
noise, disagreement and biases of real raters.

A rater shown responses a and b to a prompt prefers a with probability

    P(a ≻ b) = σ((u_a − u_b) / τ),   u = score + length_bias · M + agreement_bias · A

(Bradley & Terry 1952; the labelling model of Christiano et al. 2017 and Ouyang et al. 2022),
where M is the response's length in tokens before EOS, A the number of its symbols equal to the
prompt's symbol at the same position (parroting the prompt), and τ = ``rater_temperature``
(τ = 0: the higher utility always wins, exact ties are coin flips). The score is the gold
reward r* for most raters; a ``disagreement`` share of them ignore order and score the
multiset overlap with the target instead, 2 · |overlap| / max(L, M) − 1; a
``random_label_rate`` share of labels are coin flips. With both biases at 0 the labels are
noisy r*; with a bias on, a reward model fitted to them learns a proxy that a policy can game
(longer answers, copying the prompt), which the gold reward then exposes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np


def order_blind_score(task, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    """A dissenting rater's score, float64 (B,): 2 · |multiset overlap| / max(L, M) − 1."""
    out = []
    for prompt, response in zip(prompts, responses, strict=True):
        y = task.target(prompt)
        z, _ = task.response_values(response)
        overlap = sum((Counter(y) & Counter(v for v in z if v >= 0)).values())
        out.append(2.0 * overlap / max(len(y), len(z)) - 1.0)
    return np.asarray(out, np.float64)


def label_pairs(
    task,
    prompts: Sequence[str],
    responses_a: Sequence[str],
    responses_b: Sequence[str],
    *,
    rng: np.random.Generator,
) -> tuple[list[dict], dict]:
    """Labels each (prompt, a, b) with one simulated rater (module docstring).

    Returns preference rows {"prompt", "chosen", "rejected"}, one per pair and in order
    (identical or empty responses are kept, for the caller to filter), and ``info``:
    arrays (B,) "gold_a", "gold_b", "gold_margin" (r*_chosen − r*_rejected), "p_a" (the
    rater's probability of choosing a), "a_chosen", "rater" ("gold", "dissent" or
    "random"); scalars "agreement" (share of pairs with distinct r* whose label agrees with
    r*), "num_gold_ties", "longer_chosen" / "longer_better_by_gold" (among pairs of
    different lengths, how often the longer one was chosen / has the higher r*) and
    "parroting_chosen" / "parroting_better_by_gold" (the same for the response with more
    prompt matches).
    """
    n = len(prompts)
    if not len(responses_a) == len(responses_b) == n:
        raise ValueError(
            f"{n} prompts, {len(responses_a)} responses_a, {len(responses_b)} responses_b; "
            "expected one pair per prompt"
        )
    c = task.config
    gold_a, gold_b = task.gold_reward(prompts, responses_a), task.gold_reward(prompts, responses_b)
    stats_a = task.response_stats(prompts, responses_a)
    stats_b = task.response_stats(prompts, responses_b)
    # Draw every stream in full whatever the config, so that turning one knob does not
    # reshuffle the labels the others produce.
    random_label = rng.random(n) < c.random_label_rate
    dissent = ~random_label & (rng.random(n) < c.disagreement)
    coin = rng.random(n)
    score_a = np.where(dissent, order_blind_score(task, prompts, responses_a), gold_a)
    score_b = np.where(dissent, order_blind_score(task, prompts, responses_b), gold_b)
    length_diff = stats_a["length"] - stats_b["length"]
    matches_diff = stats_a["prompt_matches"] - stats_b["prompt_matches"]
    delta = score_a - score_b + c.length_bias * length_diff + c.agreement_bias * matches_diff
    if c.rater_temperature == 0:
        p_a = np.where(delta > 0, 1.0, np.where(delta < 0, 0.0, 0.5))
    else:
        p_a = 0.5 * (1.0 + np.tanh(0.5 * delta / c.rater_temperature))  # σ without overflow
    p_a = np.where(random_label, 0.5, p_a)
    a_chosen = coin < p_a

    rows = [
        {"prompt": p, "chosen": a if pick else b, "rejected": b if pick else a}
        for p, a, b, pick in zip(prompts, responses_a, responses_b, a_chosen, strict=True)
    ]
    margin = np.where(a_chosen, gold_a - gold_b, gold_b - gold_a)
    distinct = gold_a != gold_b
    a_better = gold_a > gold_b

    def chosen_and_gold_rate(diff):
        """How often the side with the larger ``diff`` was chosen / is better by r*."""
        return _mean((a_chosen == (diff > 0))[diff != 0]), _mean(
            (a_better == (diff > 0))[(diff != 0) & distinct]
        )

    longer_chosen, longer_better = chosen_and_gold_rate(length_diff)
    parroting_chosen, parroting_better = chosen_and_gold_rate(matches_diff)
    info = {
        "gold_a": gold_a,
        "gold_b": gold_b,
        "gold_margin": margin,
        "p_a": p_a,
        "a_chosen": a_chosen,
        "rater": np.where(random_label, "random", np.where(dissent, "dissent", "gold")),
        "agreement": _mean(margin[distinct] > 0),
        "num_gold_ties": int(np.sum(~distinct)),
        "longer_chosen": longer_chosen,
        "longer_better_by_gold": longer_better,
        "parroting_chosen": parroting_chosen,
        "parroting_better_by_gold": parroting_better,
    }
    return rows, info


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if x.size else float("nan")
