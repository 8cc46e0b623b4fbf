"""The over-optimisation study's analysis and report (`overoptimization.Study` runs the arms):
each proxy's best-of-n and RL points, Gao et al.'s forms fitted to them, the figure-1 and
scaling plots, report.md and report.json."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import TYPE_CHECKING

import numpy as np

from rlhf_jax import evaluation as ev

if TYPE_CHECKING:
    from rlhf_jax.synthetic.overoptimization import Study


def kl_tag(coef: float) -> str:
    return f"kl{coef:g}"


def rl_points(history: list[dict], *, bin_size: int) -> dict[str, np.ndarray]:
    """The RL arm's points: iterations averaged in bins of ``bin_size`` (the last partial bin
    dropped): KL (clipped at 0), gold and raw proxy per bin; float64."""
    k = len(history) // bin_size
    if k < 2:
        raise ValueError(f"{len(history)} iterations make fewer than two bins of {bin_size}")
    col = lambda key: np.array([row[key] for row in history[: k * bin_size]], np.float64)
    mean = lambda x: x.reshape(k, bin_size).mean(axis=1)
    return {
        "kl": np.maximum(mean(col("objective/kl")), 0.0),
        "gold": mean(col("objective/gold")),
        "proxy": mean(col("objective/raw_scores")),
    }


def _fit(d, gain, form) -> dict:
    fit = ev.fit_gao(d, gain, form=form)
    return dataclasses.asdict(fit)


def analyse(study: Study) -> dict:
    """Every proxy's points and fits, as plain data."""
    c = study.config
    out = {"proxies": []}
    for proxy in study.proxies:
        bon = study.best_of_n(proxy)
        pts = bon["points"]
        gold0, proxy0 = pts[0]["gold"], pts[0]["proxy"]  # n = 1: the SFT policy itself
        d_bon = np.sqrt([p["kl"] for p in pts])
        entry = {
            "tag": proxy.tag,
            "width": proxy.width,
            "pairs": proxy.pairs,
            "gold_accuracy": bon["gold_accuracy"],
            "sft_gold": gold0,
            "bon": {
                "d": d_bon.tolist(),
                "gold_gain": [p["gold"] - gold0 for p in pts],
                "proxy_gain": [p["proxy"] - proxy0 for p in pts],
                "fit": _fit(d_bon, [p["gold"] - gold0 for p in pts], "bon"),
            },
            "rl": {},
        }
        for k in c.kl_coefs:
            lines = (study.rl_dir(proxy, k) / "history.jsonl").read_text()
            history = [json.loads(x) for x in lines.splitlines() if x.strip()]
            rp = rl_points(history, bin_size=c.rl_bin)
            d = np.sqrt(rp["kl"])
            gain = rp["gold"] - gold0
            peak = int(np.argmax(rp["gold"]))
            entry["rl"][kl_tag(k)] = {
                "kl_coef": k,
                "d": d.tolist(),
                "gold_gain": gain.tolist(),
                "proxy_gain": (rp["proxy"] - proxy0).tolist(),
                "fit": _fit(d, gain, "rl"),
                "observed_peak": {
                    "d": float(d[peak]),
                    "gold_gain": float(gain[peak]),
                    "bin": peak,
                    "passed": peak < len(d) - 1,
                },
                "final": {"d": float(d[-1]), "gold_gain": float(gain[-1])},
            }
        out["proxies"].append(entry)
    return out


def _plot_curves(path, proxies, kl_tag):
    from rlhf_jax.evaluation.plots import figure, save_png

    fig, axes = figure(nrows=2, height=3.6)
    colors = [f"C{i}" for i in range(len(proxies))]
    for ax, form in zip(axes, ("bon", "rl"), strict=True):
        for color, e in zip(colors, proxies, strict=True):
            arm = e["bon"] if form == "bon" else e["rl"][kl_tag]
            d = np.asarray(arm["d"])
            label = f"w{e['width']}, {e['pairs']} pairs"
            ax.plot(d, arm["gold_gain"], "o", color=color, ms=3)
            ax.plot(d, arm["proxy_gain"], "--", color=color, lw=1)
            grid = np.linspace(0, d.max(), 100)
            f = arm["fit"]
            ax.plot(
                grid,
                ev.gao_curve(grid, alpha=f["alpha"], beta=f["beta"], form=form),
                "-",
                color=color,
                lw=1.5,
                label=label,
            )
        ax.axhline(0, color="k", lw=0.5)
        name = "best-of-n" if form == "bon" else f"PPO, KL coef {kl_tag.removeprefix('kl')}"
        ax.set_title(f"{name}: gold (points; fit solid), raw proxy (dashed) over SFT", fontsize=10)
        ax.set_ylabel("reward gained")
        ax.set_xlabel("d = √KL (nats^½)")
        ax.legend(fontsize=7)
    return save_png(fig, path)


def _plot_scaling(path, proxies, kl_tag):
    from rlhf_jax.evaluation.plots import figure, save_png

    fig, axes = figure(nrows=2, height=3.2)
    widths = sorted({e["width"] for e in proxies})
    for ax, param in zip(axes, ("alpha", "beta"), strict=True):
        for i, w in enumerate(widths):
            rows = sorted((e for e in proxies if e["width"] == w), key=lambda e: e["pairs"])
            n = [e["pairs"] for e in rows]
            ax.plot(
                n,
                [e["bon"]["fit"][param] for e in rows],
                "o-",
                color=f"C{i}",
                label=f"best-of-n, w{w}",
            )
            ax.plot(
                n,
                [e["rl"][kl_tag]["fit"][param] for e in rows],
                "s--",
                color=f"C{i}",
                label=f"RL, w{w}",
            )
        ax.set_xscale("log")
        ax.set_ylabel(param)
        ax.legend(fontsize=7)
    axes[-1].set_xlabel("proxy's preference pairs")
    axes[0].set_title("fitted α and β against the proxy's data size")
    return save_png(fig, path)


def _num(x, digits=3):
    return "—" if x is None else f"{x:.{digits}f}"


def write_report(study: Study) -> dict:
    """report.md, report.json and the PNGs in the study's run directory."""
    c = study.config
    data = analyse(study)
    proxies = data["proxies"]
    plots = {}
    for k in c.kl_coefs:
        tag = kl_tag(k)
        plots[f"curves_{tag}"] = str(_plot_curves(study.path(f"curves_{tag}.png"), proxies, tag))
        if len(c.data_sizes) > 1:
            plots[f"scaling_{tag}"] = str(
                _plot_scaling(study.path(f"scaling_{tag}.png"), proxies, tag)
            )
    lines = [
        "# Reward-model over-optimisation on the synthetic task",
        "",
        "Gold gained over SFT against d = √KL, fitted with Gao et al.'s forms "
        "R_bon = d(α − βd) and R_rl = d(α − β log d). d* is the fitted gold peak "
        "(— where β ≤ 0: no peak within the form); the observed peak is the best "
        f"{c.rl_bin}-iteration bin, and 'passed' says whether the run went beyond it.",
        "",
        f"SFT gold on the {c.bon_prompts} best-of-n prompts: {proxies[0]['sft_gold']:.3f}. "
        f"Best-of-n up to n = {2**c.bon_log2}; PPO {c.rl.iterations} iterations of "
        f"{c.rl.prompts_per_iteration} prompts at learning rate {c.rl_learning_rate:g}.",
        "",
        "| proxy | pairs | gold acc. | BoN α | BoN β | BoN R² | BoN d* | "
        + " | ".join(
            f"RL {kl_tag(k)} α | β | R² | d* | observed peak d (gain) | passed | final d (gain)"
            for k in c.kl_coefs
        )
        + " |",
        "|---|---|---|---|---|---|---|" + "---|---|---|---|---|---|---|" * len(c.kl_coefs),
    ]
    for e in proxies:
        b = e["bon"]["fit"]
        cells = [
            f"w{e['width']}",
            str(e["pairs"]),
            _num(e["gold_accuracy"]),
            _num(b["alpha"]),
            _num(b["beta"]),
            _num(b["r2"]),
            _num(b["peak_d"], 2),
        ]
        for k in c.kl_coefs:
            r = e["rl"][kl_tag(k)]
            f, p = r["fit"], r["observed_peak"]
            cells += [
                _num(f["alpha"]),
                _num(f["beta"]),
                _num(f["r2"]),
                _num(f["peak_d"], 2),
                f"{p['d']:.2f} ({p['gold_gain']:+.3f})",
                "yes" if p["passed"] else "no",
                f"{r['final']['d']:.2f} ({r['final']['gold_gain']:+.3f})",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *(f"![{name}]({pathlib.Path(p).name})" for name, p in plots.items()), ""]
    (study.path("report.md")).write_text("\n".join(lines))
    data["plots"] = plots
    data["config"] = json.loads(json.dumps(dataclasses.asdict(c), default=str))
    study.path("report.json").write_text(json.dumps(data, indent=2))
    print(f"[study] report: {study.path('report.md')}")
    return {"report": str(study.path("report.md")), "analysis": data}
