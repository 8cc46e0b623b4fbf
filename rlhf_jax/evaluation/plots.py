"""The report's plots: reward vs KL, proxy and gold over training, response length, win rates.

matplotlib's object API with the Agg canvas (no pyplot, no global backend state), so plotting
is safe inside a training process or a notebook. Each function writes one PNG and returns its
path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from rlhf_jax.evaluation.best_of_n import BestOfNPoint
from rlhf_jax.evaluation.frontier import FrontierPoint, frontier
from rlhf_jax.evaluation.history import DEFAULT_KEYS, HistoryKeys, column, has, iterations
from rlhf_jax.evaluation.winrate import WinRate


def figure(nrows: int = 1, height: float = 4.0):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(
            "the evaluation report's plots need matplotlib: pip install matplotlib"
        ) from e
    fig = Figure(figsize=(7.0, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, 1, sharex=True, squeeze=False)[:, 0]
    return fig, axes


def ema(values, *, span: int) -> np.ndarray:
    """Exponential moving average with α = 2 / (span + 1), bias-corrected at the start (so
    the first value is the first point, not a fraction of it)."""
    values = np.asarray(values, np.float64)
    alpha = 2.0 / (span + 1.0)
    out, acc, weight = np.empty_like(values), 0.0, 0.0
    for i, v in enumerate(values):
        acc = (1 - alpha) * acc + alpha * v
        weight = (1 - alpha) * weight + alpha
        out[i] = acc / weight
    return out


def _integer_ticks(axis) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def save_png(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=110)
    return path


def plot_reward_vs_kl(
    path,
    points: Sequence[FrontierPoint],
    *,
    best_of_n: Sequence[BestOfNPoint] = (),
    reward: str = "gold",
) -> Path:
    """Reward (``reward`` = "gold" or "proxy") against KL: each run's iterations, the other
    points, best-of-n at its analytic KL, and the Pareto frontier of all of them."""
    bon = [p.frontier_point() for p in best_of_n]
    usable = [p for p in [*points, *bon] if math.isfinite(p.kl) and math.isfinite(p.reward(reward))]
    if not usable:
        raise ValueError(f"points and best_of_n hold no point with a finite KL and {reward} reward")
    fig, (ax,) = figure()
    runs = {p.run for p in usable if p.kind == "policy" and p.iteration is not None}
    for run in sorted(runs):
        pts = [p for p in usable if p.run == run and p.kind == "policy" and p.iteration is not None]
        pts.sort(key=lambda p: p.iteration)
        kl, y = np.array([p.kl for p in pts]), np.array([p.reward(reward) for p in pts])
        # Each iteration a faint point; the trend through them their moving average (joining
        # hundreds of noisy iterations with one line draws only the noise).
        (dots,) = ax.plot(kl, y, ".", ms=3, alpha=0.3)
        span = max(2, len(pts) // 10)
        ax.plot(ema(kl, span=span), ema(y, span=span), "-", lw=1.5, color=dots.get_color(),
                label=f"{run} (iterations, moving average)")  # fmt: skip
    for p in usable:
        if p.kind != "best_of_n" and p.iteration is None:
            ax.plot([p.kl], [p.reward(reward)], "*", ms=12, label=p.run or p.kind)
    bon_pts = [p for p in usable if p.kind == "best_of_n"]
    if bon_pts:
        ax.plot(
            [p.kl for p in bon_pts],
            [p.reward(reward) for p in bon_pts],
            "ks--",
            ms=5,
            lw=1,
            label="best-of-n",
        )
        for b in best_of_n:
            y = b.gold if reward == "gold" else b.proxy
            if math.isfinite(y):
                ax.annotate(
                    f"n={b.n}", (b.kl, y), textcoords="offset points", xytext=(4, -10), fontsize=7
                )
    front = frontier(usable, reward=reward)
    ax.step(
        [p.kl for p in front],
        [p.reward(reward) for p in front],
        where="post",
        color="grey",
        lw=2,
        alpha=0.5,
        label="Pareto frontier",
    )
    ax.set_xlabel("KL(π ‖ π_ref) per response (nats)")
    ax.set_ylabel(f"{reward} reward")
    ax.set_title(f"{reward.capitalize()} reward vs KL")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(fig, path)


def _runs_with(runs: Mapping[str, Sequence[Mapping]], key: str) -> list[str]:
    return [name for name, history in runs.items() if history and has(history, key)]


def plot_proxy_and_gold(
    path, runs: Mapping[str, Sequence[Mapping]], *, keys: HistoryKeys = DEFAULT_KEYS
) -> Path:
    """Proxy (top) and gold (bottom) reward over iterations, one line per run."""
    with_proxy, with_gold = _runs_with(runs, keys.proxy), _runs_with(runs, keys.gold)
    if not with_proxy and not with_gold:
        raise ValueError(f"no run logs {keys.proxy!r} or {keys.gold!r}")
    fig, (top, bottom) = figure(2, height=3.0)
    for ax, key, names, label in (
        (top, keys.proxy, with_proxy, "proxy (reward model)"),
        (bottom, keys.gold, with_gold, "gold reward"),
    ):
        for name in names:
            its, y = iterations(runs[name], keys), column(runs[name], key)
            ok = np.isfinite(y)
            ax.plot(its[ok], y[ok], "-", lw=1.2, label=name)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if names:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not logged", transform=ax.transAxes, ha="center")
    top.set_title("Proxy vs gold reward over training")
    bottom.set_xlabel("iteration")
    _integer_ticks(bottom.xaxis)
    return save_png(fig, path)


def plot_length(
    path, runs: Mapping[str, Sequence[Mapping]], *, keys: HistoryKeys = DEFAULT_KEYS
) -> Path:
    """Mean response length over iterations, one line per run."""
    names = _runs_with(runs, keys.length)
    if not names:
        raise ValueError(f"no run logs {keys.length!r}")
    fig, (ax,) = figure()
    for name in names:
        its, y = iterations(runs[name], keys), column(runs[name], keys.length)
        ok = np.isfinite(y)
        ax.plot(its[ok], y[ok], "-", lw=1.2, label=name)
    ax.set_xlabel("iteration")
    _integer_ticks(ax.xaxis)
    ax.set_ylabel("mean response length (tokens)")
    ax.set_title("Response length over training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(fig, path)


def plot_win_rates(path, win_rates: Mapping[str, WinRate]) -> Path:
    """Win rates with their confidence intervals as horizontal bars; 0.5 marks parity."""
    if not win_rates:
        raise ValueError("win_rates is empty")
    labels = list(win_rates)
    rates = np.array([w.rate for w in win_rates.values()])
    err = np.array(
        [
            [w.rate - w.ci_low for w in win_rates.values()],
            [w.ci_high - w.rate for w in win_rates.values()],
        ]
    )
    fig, (ax,) = figure(height=1.0 + 0.5 * len(labels))
    y = np.arange(len(labels))
    ax.barh(y, rates, xerr=err, capsize=4, color="tab:blue", alpha=0.7)
    ax.axvline(0.5, color="k", lw=1, ls="--")
    # The numbers go in the tick labels, where no bar or error bar can cover them.
    ticks = [
        f"{label}\n{w.rate:.2f} [{w.ci_low:.2f}, {w.ci_high:.2f}], n={w.n}"
        for label, w in win_rates.items()
    ]
    ax.set_yticks(y, ticks, fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("win rate (ties count half), with confidence interval")
    ax.set_title("Win rate")
    return save_png(fig, path)
