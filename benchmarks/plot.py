"""Speed-up of rlhf_jax over each peer, per row, from ``side_by_side.py --json`` results.

One panel per results file (e.g. PyTorch on 1 thread and on 2), one bar per (row, peer):
their median step time over ours, on a log axis with the line at 1x (level) and 3x (the PPO
target). A row a peer cannot run gets no bar and its reason under the panel.

    .venv/bin/python benchmarks/plot.py results/cpu-avx2-2026-12-01-torch1.json \\
        results/cpu-avx2-2026-12-01-torch2.json --out results/cpu-avx2-2026-12-01.png
"""

from __future__ import annotations

import argparse
import json
import pathlib

PEER_NAMES = {"trl": "TRL", "trl112": "TRL", "tunix": "Tunix"}


def ratios(results: list[dict]) -> tuple[list[tuple[str, str, float]], list[str]]:
    """(row, peer, their median / ours) for each row both ran, and why the others did not."""
    bars, missing = [], []
    for result in results:
        row, sides = result["row"], result["sides"]
        ours = sides["ours"]["median_s"]
        if not ours:
            raise ValueError(f"row {row!r}: our side has no time ({sides['ours']['failure']})")
        for side, entry in sides.items():
            if side == "ours":
                continue
            peer = PEER_NAMES.get(side, side)
            if entry["median_s"]:
                bars.append((row, peer, entry["median_s"] / ours))
            else:
                missing.append(f"{row}/{peer}: {entry['failure']}")
    return bars, missing


def _title(meta: dict) -> str:
    threads = meta.get("torch_threads")
    device = meta.get("gpu") or f"{meta.get('cores')}-core {meta.get('cpu')}"
    return f"{device}, {meta['date']}\nPyTorch threads: {threads}"


def plot(paths: list[str], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [json.loads(pathlib.Path(p).read_text()) for p in paths]
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4.5), squeeze=False)
    for ax, run in zip(axes[0], runs, strict=True):
        bars, missing = ratios(run["results"])
        labels = [f"{row} vs {peer}" for row, peer, _ in bars][::-1]
        values = [r for _, _, r in bars][::-1]
        colors = ["tab:green" if v >= 1 else "tab:red" for v in values]
        ax.barh(labels, values, color=colors)
        for y, v in enumerate(values):
            ax.text(v, y, f" {v:.2f}x", va="center")
        ax.set_xscale("log")
        ax.axvline(1.0, color="black", lw=1)
        ax.axvline(3.0, color="grey", lw=1, ls="--")
        ax.set_xlim(0.25, 8)
        ticks = [0.25, 0.5, 1, 2, 3, 4, 8]
        ax.set_xticks(ticks, [f"{t:g}x" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("their median step time / ours (> 1: rlhf_jax faster; dashed: 3x)")
        ax.set_title(_title(run["meta"]), fontsize=9)
        if missing:
            ax.annotate(
                "not run: " + "; ".join(m.split(":")[0] for m in missing),
                (0, -0.22),
                xycoords="axes fraction",
                fontsize=7,
            )
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="side_by_side.py --json files")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    plot(args.results, args.out)
    print(args.out)


if __name__ == "__main__":
    main()
