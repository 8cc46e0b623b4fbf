"""The end-of-run report: a markdown summary, PNG plots, and the same data as JSON.

Everything comes in as plain Python data, so the report needs nothing from the training code:

    runs          run name → per-iteration metrics dicts (read through ``HistoryKeys``)
    extra_points  ``FrontierPoint``s that are not iterations: the SFT policy at KL 0, a DPO
                  policy, a final evaluation
    best_of_n     ``BestOfNPoint``s from ``best_of_n_curve`` / ``run_best_of_n``
    win_rates     label → ``WinRate`` (e.g. "PPO vs SFT, gold")
    monitors      ``HackingMonitor.summary()``
    red_team      ``RedTeamResult``

Plots (`plots.py`) use matplotlib's object API with the Agg canvas (no pyplot, no global
backend state), so writing a report is safe inside a training process or a notebook.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from rlhf_jax.evaluation.best_of_n import BestOfNPoint
from rlhf_jax.evaluation.frontier import FrontierPoint, collect_points, frontier
from rlhf_jax.evaluation.history import DEFAULT_KEYS, HistoryKeys, column, has
from rlhf_jax.evaluation.plots import (
    plot_length,
    plot_proxy_and_gold,
    plot_reward_vs_kl,
    plot_win_rates,
)
from rlhf_jax.evaluation.redteam import RedTeamResult
from rlhf_jax.evaluation.winrate import WinRate
from rlhf_jax.logging import jsonable

# Rows of a red-team or warning table shown in the markdown; report.json keeps all of them.
MAX_TABLE_ROWS = 30


def _last_finite(history: Sequence[Mapping], key: str) -> float | None:
    values = column(history, key)
    finite = values[np.isfinite(values)]
    return float(finite[-1]) if finite.size else None


@dataclasses.dataclass(frozen=True)
class Report:
    markdown: Path  # report.md
    json: Path  # report.json: the same data in full
    plots: dict[str, Path]  # plot name → PNG


def fmt(x) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return "–" if math.isnan(x) else f"{x:.4g}"
    return str(x)


def _cell(text: str, limit: int = 80) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_cell(fmt(c)) for c in row) + " |" for row in rows]
    return [*out, ""]


def _clipped(rows: list, what: str) -> tuple[list, list[str]]:
    if len(rows) <= MAX_TABLE_ROWS:
        return rows, []
    return rows[:MAX_TABLE_ROWS], [
        f"… and {len(rows) - MAX_TABLE_ROWS} more {what}; all are in report.json.",
        "",
    ]


def _definitions(keys: HistoryKeys, *, raw: bool) -> list[str]:
    score = (
        "the reward model's raw score of a response"
        if raw
        else "the reward model's score as training used it (normalised where the run "
        "normalised it; not every run logged the raw one)"
    )
    return [
        "What the numbers are:",
        "",
        f"- **proxy**: {score} (`{keys.proxy}` in the training logs): what the policy was "
        "trained to raise, and what can be gamed.",
        f"- **gold**: the true reward r* of the same response (`{keys.gold}`), known only on "
        "tasks that define one (the synthetic task); a proxy rising while gold falls is reward "
        "hacking.",
        f"- **KL**: mean KL(π ‖ π_ref) per response in nats (`{keys.kl}`), the distance from "
        "the reference (SFT) policy; **length**: mean response length in tokens.",
        "",
    ]


def write_report(
    out_dir,
    *,
    runs: Mapping[str, Sequence[Mapping]] | None = None,
    keys: HistoryKeys = DEFAULT_KEYS,
    extra_points: Sequence[FrontierPoint] = (),
    best_of_n: Sequence[BestOfNPoint] = (),
    win_rates: Mapping[str, WinRate] | None = None,
    monitors: Mapping | None = None,
    red_team: RedTeamResult | None = None,
    title: str = "RLHF run report",
    notes: Mapping[str, object] | None = None,
) -> Report:
    """Write ``report.md``, ``report.json`` and the PNG plots the data allows into ``out_dir``.

    A plot whose data is missing is left out and the markdown says so; ``notes`` (e.g. the
    config name, wall time) become a table at the top.
    """
    runs = dict(runs or {})
    win_rates = dict(win_rates or {})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots: dict[str, Path] = {}
    logged = [h for h in runs.values() if h]
    raw = bool(keys.raw_proxy and logged and all(has(h, keys.raw_proxy) for h in logged))
    if raw:
        keys = dataclasses.replace(keys, proxy=keys.raw_proxy)
    md = [f"# {title}", ""]
    if notes:
        md += markdown_table(["", "value"], [[k, v] for k, v in notes.items()])
    md += _definitions(keys, raw=raw or not logged)

    md += ["## Summary", ""]
    if runs:
        rows = []
        for name, history in runs.items():
            last = [_last_finite(history, k) for k in (keys.kl, keys.proxy, keys.gold, keys.length)]
            rows.append([name, len(history), *last])
        md += ["Last logged value of each run:", ""]
        md += markdown_table(["run", "iterations", "KL", "proxy", "gold", "length"], rows)
    else:
        md += ["No training history was given.", ""]

    md += ["## Win rate", ""]
    if win_rates:
        plots["win_rate"] = plot_win_rates(out / "win_rate.png", win_rates)
        md += [f"![win rate]({plots['win_rate'].name})", ""]
        pct = {round(100 * w.confidence) for w in win_rates.values()}
        md += markdown_table(
            [
                "comparison",
                "win rate",
                f"{'/'.join(map(str, sorted(pct)))}% CI (Wilson)",
                "wins / ties / losses",
                "n",
            ],
            [
                [
                    k,
                    w.rate,
                    f"[{w.ci_low:.3f}, {w.ci_high:.3f}]",
                    f"{w.wins} / {w.ties} / {w.losses}",
                    w.n,
                ]
                for k, w in win_rates.items()
            ],
        )
    else:
        md += ["No win rate was computed.", ""]

    points = [*collect_points(runs, keys=keys), *extra_points]
    bon_fp = [b.frontier_point() for b in best_of_n]
    reward = "gold" if any(math.isfinite(p.gold) for p in [*points, *bon_fp]) else "proxy"
    md += [f"## {reward.capitalize()} reward vs KL", ""]
    try:
        plots["reward_vs_kl"] = plot_reward_vs_kl(
            out / "reward_vs_kl.png", points, best_of_n=best_of_n, reward=reward
        )
    except ValueError:
        md += ["No point with both a KL and a reward was logged.", ""]
    else:
        if reward == "proxy":
            md += ["No gold reward was logged, so this is the proxy (reward-model) score.", ""]
        md += [f"![reward vs KL]({plots['reward_vs_kl'].name})", "", "Pareto frontier:", ""]
        front = frontier([*points, *bon_fp], reward=reward)
        rows, more = _clipped(front, "frontier points")
        md += markdown_table(
            ["run", "kind", "iteration", "KL", "gold", "proxy"],
            [[p.run, p.kind, p.iteration, p.kl, p.gold, p.proxy] for p in rows],
        )
        md += more
    if best_of_n:
        md += ["Best-of-n (KL = log n − (n−1)/n):", ""]
        md += markdown_table(
            ["n", "KL", "proxy", "gold"], [[b.n, b.kl, b.proxy, b.gold] for b in best_of_n]
        )

    md += ["## Proxy vs gold reward over training", ""]
    try:
        plots["proxy_gold"] = plot_proxy_and_gold(out / "proxy_gold.png", runs, keys=keys)
        md += [f"![proxy and gold reward]({plots['proxy_gold'].name})", ""]
    except ValueError:
        md += [f"Not logged ({keys.proxy!r}, {keys.gold!r}).", ""]

    md += ["## Response length over training", ""]
    try:
        plots["length"] = plot_length(out / "length.png", runs, keys=keys)
        md += [f"![response length]({plots['length'].name})", ""]
    except ValueError:
        md += [f"Not logged ({keys.length!r}).", ""]

    md += ["## Reward-hacking monitors", ""]
    if monitors is None:
        md += ["The monitors did not run.", ""]
    elif not monitors.get("monitors"):
        md += [f"No monitor fired over {monitors.get('updates', 0)} updates.", ""]
    else:
        fired = monitors["monitors"]
        md += [
            f"{len(fired)} monitor(s) fired over {monitors.get('updates', 0)} updates; "
            f"still firing at the end: {', '.join(monitors.get('firing', [])) or 'none'}.",
            "",
        ]
        md += markdown_table(
            ["monitor", "updates fired", "first", "last", "threshold", "last message"],
            [
                [
                    m,
                    e["count"],
                    e["first_iteration"],
                    e["last_iteration"],
                    e["threshold"],
                    e["last_message"],
                ]
                for m, e in fired.items()
            ],
        )

    md += ["## Red team", ""]
    if red_team is None:
        md += ["No red-team pass was run.", ""]
    else:
        s = red_team.summary()
        md += [
            f"{s['regressions']} of {s['prompts']} prompts regressed (after < before − "
            f"{s['tolerance']:g}); {s['improved']} improved. Mean score {s['mean_before']:.4g} "
            f"→ {s['mean_after']:.4g}.",
            "",
        ]
        if red_team.regressions:
            rows, more = _clipped(red_team.regressions, "regressions")
            md += (
                markdown_table(
                    ["#", "prompt", "before", "after", "Δ"],
                    [[r.index, r.prompt, r.before, r.after, r.delta] for r in rows],
                )
                + more
            )

    md_path, json_path = out / "report.md", out / "report.json"
    md_path.write_text("\n".join(md).rstrip() + "\n", encoding="utf-8")
    data = {
        "title": title,
        "notes": notes or {},
        "runs": runs,
        "extra_points": list(extra_points),
        "best_of_n": list(best_of_n),
        "win_rates": win_rates,
        "monitors": monitors,
        "red_team": None
        if red_team is None
        else {
            **red_team.summary(),
            "regressions": [
                {**dataclasses.asdict(r), "delta": r.delta} for r in red_team.regressions
            ],
            "prompts": red_team.prompts,
            "before": red_team.before_P,
            "after": red_team.after_P,
        },
        "plots": plots,
    }
    json_path.write_text(json.dumps(jsonable(data), indent=1, default=str), encoding="utf-8")
    return Report(md_path, json_path, plots)
