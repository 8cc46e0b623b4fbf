"""Evaluation of RLHF policies: win rates, the KL–reward frontier, best-of-n, reward-hacking
monitors, a red-team pass, and the end-of-run report.

    from rlhf_jax import evaluation as ev

    ev.win_rate(gold_ppo_B, gold_sft_B)                   # A vs B per prompt, Wilson 95% CI
    ev.best_of_n_curve(proxy_BxN, gold_BxN, ns=[1, 4, 16])  # the baseline, at KL = log n − (n−1)/n
    ev.frontier(ev.collect_points({"ppo": history}))      # Pareto points of (low KL, high reward)
    monitor = ev.HackingMonitor(ev.MonitorConfig())       # .update(it, stats) -> warnings
    ev.red_team(prompts, score_before=..., score_after=...)
    ev.fit_gao(sqrt_kl_P, gold_gain_P, form="rl")         # Gao et al.'s α, β, R², gold peak
    ev.write_report(run_dir, runs={"ppo": history}, win_rates=..., monitors=monitor.summary())

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
    reward_at_kl,
)
from rlhf_jax.evaluation.history import HistoryKeys, column, window_means
from rlhf_jax.evaluation.monitors import (
    MONITORS,
    STATS_KEYS,
    HackingMonitor,
    MonitorConfig,
    MonitorWarning,
    relative_change,
)
from rlhf_jax.evaluation.overoptimization import GaoFit, fit_gao, gao_curve
from rlhf_jax.evaluation.plots import (
    plot_length,
    plot_proxy_and_gold,
    plot_reward_vs_kl,
    plot_win_rates,
)
from rlhf_jax.evaluation.redteam import (
    RedTeamResult,
    Regression,
    compare_scores,
    load_red_team_prompts,
    red_team,
)
from rlhf_jax.evaluation.report import Report, write_report
from rlhf_jax.evaluation.winrate import WinRate, wilson_interval, win_rate

__all__ = [
    "MONITORS",
    "STATS_KEYS",
    "BestOfNPoint",
    "BestOfNRun",
    "BestOfNScores",
    "FrontierPoint",
    "GaoFit",
    "HackingMonitor",
    "HistoryKeys",
    "MonitorConfig",
    "MonitorWarning",
    "RedTeamResult",
    "Regression",
    "Report",
    "WinRate",
    "best_of_n_curve",
    "best_of_n_scores",
    "bon_kl",
    "collect_points",
    "column",
    "compare_scores",
    "correlation",
    "fit_gao",
    "frontier",
    "gao_curve",
    "load_red_team_prompts",
    "pareto_frontier",
    "pearson",
    "plot_length",
    "plot_proxy_and_gold",
    "plot_reward_vs_kl",
    "plot_win_rates",
    "points_from_history",
    "rankdata",
    "red_team",
    "relative_change",
    "reward_at_kl",
    "run_best_of_n",
    "select_best_of_n",
    "slope",
    "spearman",
    "wilson_interval",
    "win_rate",
    "window_means",
    "write_report",
]
