"""Evaluation of RLHF policies: win rates, the KL–reward frontier, best-of-n, reward-hacking
monitors and a red-team pass.

    from rlhf_jax import evaluation as ev

    ev.win_rate(gold_ppo_B, gold_sft_B)                   # A vs B per prompt, Wilson 95% CI
    ev.best_of_n_curve(proxy_BxN, gold_BxN, ns=[1, 4, 16])  # the baseline, at KL = log n − (n−1)/n
    ev.frontier(ev.collect_points({"ppo": history}))      # Pareto points of (low KL, high reward)
    monitor = ev.HackingMonitor(ev.MonitorConfig())       # .update(it, stats) -> warnings
    ev.red_team(prompts, score_before=..., score_after=...)

Everything here runs on the host in NumPy float64 after the device work: it is evaluation and
logging, not a training step, and it imports nothing from the training code. The generator,
reward model and gold reward come in as plain callables and arrays. Letters: B prompts or
samples, N samples per prompt, P points or red-team prompts.
"""

from rlhf_jax.evaluation.best_of_n import (
    BestOfNPoint,
    BestOfNRun,
    BestOfNScores,
    best_of_n_curve,
    best_of_n_scores,
    bon_kl,
    run_best_of_n,
    select_best_of_n,
)
from rlhf_jax.evaluation.correlation import correlation, pearson, rankdata, slope, spearman
from rlhf_jax.evaluation.frontier import (
    FrontierPoint,
    collect_points,
    frontier,
    pareto_frontier,
    points_from_history,
)
from rlhf_jax.evaluation.history import HistoryKeys, column
from rlhf_jax.evaluation.monitors import (
    MONITORS,
    STATS_KEYS,
    HackingMonitor,
    MonitorConfig,
    MonitorWarning,
    relative_change,
)
from rlhf_jax.evaluation.redteam import (
    RedTeamResult,
    Regression,
    compare_scores,
    load_prompts,
    red_team,
)
from rlhf_jax.evaluation.winrate import WinRate, wilson_interval, win_rate

__all__ = [
    "MONITORS",
    "STATS_KEYS",
    "BestOfNPoint",
    "BestOfNRun",
    "BestOfNScores",
    "FrontierPoint",
    "HackingMonitor",
    "HistoryKeys",
    "MonitorConfig",
    "MonitorWarning",
    "RedTeamResult",
    "Regression",
    "WinRate",
    "best_of_n_curve",
    "best_of_n_scores",
    "bon_kl",
    "collect_points",
    "column",
    "compare_scores",
    "correlation",
    "frontier",
    "load_prompts",
    "pareto_frontier",
    "pearson",
    "points_from_history",
    "rankdata",
    "red_team",
    "relative_change",
    "run_best_of_n",
    "select_best_of_n",
    "slope",
    "spearman",
    "wilson_interval",
    "win_rate",
]
