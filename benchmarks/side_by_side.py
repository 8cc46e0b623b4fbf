"""Side-by-side step times on this machine: rlhf_jax vs TRL (PyTorch) and Tunix (JAX).

Every side of a row loads the same HF checkpoints (written once by transformers'
``save_pretrained``: a 4-layer, width-256, 4-head, vocab-1024 Llama and a reward model with a
scalar head) and the same synthetic batch. Each side runs in its own worker process (its own
virtualenv where it needs one), warms up, then the driver asks the sides for one step in turn,
``--repeats`` rounds, so that load from other processes hits all sides alike; it reports each
side's median and our speedup (their median / ours).

    .venv/bin/python benchmarks/side_by_side.py                       # every row
    .venv/bin/python benchmarks/side_by_side.py --rows sft,dpo --repeats 9

Peers: ``trl`` (TRL 1.16 in .venv: ``pip install -e '.[bench]'``), ``trl112`` (TRL 1.12.0 for
PPO, ``.venv-trl112``) and ``tunix`` (google-tunix 0.1.7, ``.venv-tunix``); the last two come
from ``bash benchmarks/setup_peers.sh``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
SIDES = {
    "ours": (".venv", "worker_ours.py"),
    "trl": (".venv", "worker_trl.py"),
    "trl112": (".venv-trl112", "worker_trl.py"),
    "tunix": (".venv-tunix", "worker_tunix.py"),
}
# row -> (our worker's row, the peers that run it)
ROWS = {
    "reward": ("reward", ("trl", "tunix")),
    "dpo": ("dpo", ("trl", "tunix")),
    "sft": ("sft", ("trl", "tunix")),
    "generate": ("generate", ("trl", "tunix")),
    "ppo": ("ppo", ("trl112", "tunix")),
    "ppo_fused": ("ppo_fused", ("trl112",)),  # the peers run their "ppo" row
    # Ours alone, logits at every position (DataConfig.response_window=False): the A/B of the
    # response window.
    "sft_full": ("sft_full", ()),
    "dpo_full": ("dpo_full", ()),
}
# PyTorch's OpenMP pool is fragile on a shared machine: with other processes on the 2 cores,
# its 2 threads wait on each other at every op's barrier. A plain forward/backward of the LM at
# 16 x 128 took 3.7-4.8 s with 2 threads and 0.66-0.86 s with 1, alternating runs under the
# same load (XLA's pool degrades far less). ``--torch-threads`` sets the peers' thread count.
TORCH_SIDES = ("trl", "trl112")
DESCRIPTION = {
    "reward": "reward-model step, 16 pairs × 128 tokens",
    "dpo": "DPO step (policy + in-step reference), 16 pairs × 128",
    "sft": "SFT step, 16 × 128 (loss on the last 64)",
    "generate": "generation, batch 16, prompt 32, 64 new tokens (greedy)",
    "ppo": "PPO iteration, 16 episodes, prompt 32 + response 64, 4 epochs × 2 minibatches",
    "ppo_fused": "the same PPO iteration, ours fused into one XLA program",
    "sft_full": "the SFT step with logits at all 128 positions (no response window)",
    "dpo_full": "the DPO step with logits at all 128 positions (no response window)",
}


class Worker:
    def __init__(self, side, row, artifacts, warmup, log_dir, torch_threads=None):
        venv, script = SIDES[side]
        python = ROOT / venv / "bin" / "python"
        self.side, self.failure, self.info = side, None, {}
        self.log = pathlib.Path(log_dir) / f"{row}-{side}.log"
        if not python.exists():
            self.failure = f"{venv} missing: run `bash benchmarks/setup_peers.sh`"
            return
        env = dict(
            os.environ,
            JAX_PLATFORMS="cpu",
            TOKENIZERS_PARALLELISM="false",
            HF_HUB_OFFLINE="1",
            HF_DATASETS_OFFLINE="1",
            TRANSFORMERS_VERBOSITY="error",
            PYTHONWARNINGS="ignore",
        )
        if torch_threads and side in TORCH_SIDES:
            env.update(OMP_NUM_THREADS=str(torch_threads), MKL_NUM_THREADS=str(torch_threads))
        cmd = [str(python), str(BENCH / script), "--row", row, "--artifacts", artifacts]
        cmd += ["--warmup", str(warmup)]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(self.log, "w"),
            text=True,
            cwd=ROOT,
            env=env,
        )
        kind, payload = self._read()
        if kind == "READY":
            self.info = json.loads(payload or "{}")
        elif kind == "UNSUPPORTED":
            self.failure = payload
        else:
            self.failure = f"worker failed before warm-up ended (log: {self.log}): {self._tail()}"

    def _read(self):
        while True:
            line = self.proc.stdout.readline()
            if not line:
                return None, None
            kind, _, payload = line.strip().partition(" ")
            if kind in ("READY", "TIME", "UNSUPPORTED"):
                return kind, payload

    def _tail(self):
        lines = [x for x in self.log.read_text().splitlines() if x.strip()]
        return lines[-1][-300:] if lines else "(no output)"

    def step(self) -> float | None:
        if self.failure:
            return None
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        kind, payload = self._read()
        if kind != "TIME":
            self.failure = f"worker died during timing (log: {self.log}): {self._tail()}"
            return None
        return float(payload)

    def close(self):
        if getattr(self, "proc", None) is not None and self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=60)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()


def run_row(row, artifacts, repeats, warmup, log_dir, peers, torch_threads):
    ours_row, row_peers = ROWS[row]
    sides = ["ours", *[p for p in row_peers if p in peers]]
    workers = []
    for side in sides:  # warm up one at a time: a compiling side would slow a timed one
        print(f"[{row}] warming up {side}", file=sys.stderr, flush=True)
        side_row = ours_row if side == "ours" else row.removesuffix("_fused")
        workers.append(Worker(side, side_row, artifacts, warmup, log_dir, torch_threads))
    times = {w.side: [] for w in workers}
    for _ in range(repeats):
        for w in workers:
            t = w.step()
            if t is not None:
                times[w.side].append(t)
    for w in workers:
        w.close()
    result = {"row": row, "sides": {}}
    for w in workers:
        ts = times[w.side]
        result["sides"][w.side] = {
            "median_s": statistics.median(ts) if ts and not w.failure else None,
            "times_s": ts,
            "failure": w.failure,
            "info": w.info,
        }
    return result


def versions():
    out = {"python": platform.python_version()}
    for side, (venv, _) in SIDES.items():
        python = ROOT / venv / "bin" / "python"
        if not python.exists():
            continue
        mods = {"ours": "jax torch", "trl": "trl", "trl112": "trl", "tunix": "tunix jax"}[side]
        code = (
            "import importlib.metadata as m, sys\n"
            "names = {'jax':'jax','torch':'torch','trl':'trl','tunix':'google-tunix'}\n"
            "print(' '.join(f'{k}={m.version(names[k])}' for k in sys.argv[1:]))"
        )
        r = subprocess.run([str(python), "-c", code, *mods.split()], capture_output=True, text=True)
        out[side] = r.stdout.strip() or r.stderr.strip()[-200:]
    return out


def cpu_model():
    try:
        r = subprocess.run(["lscpu"], capture_output=True, text=True)
        for line in r.stdout.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def fmt_ms(side):
    if side is None:
        return "—"
    if side["median_s"] is None:
        return f"n/a: {side['failure']}"
    return f"{side['median_s'] * 1e3:,.0f}"


def ratio(ours, peer):
    if peer is None or ours["median_s"] is None or peer["median_s"] is None:
        return "—"
    return f"{peer['median_s'] / ours['median_s']:.2f}x"


def print_table(results):
    print("| row | ours (ms) | TRL (ms) | ours vs TRL | Tunix (ms) | ours vs Tunix |")
    print("|---|--:|--:|--:|--:|--:|")
    for r in results:
        s = r["sides"]
        trl = s.get("trl") or s.get("trl112")
        tunix = s.get("tunix")
        print(
            f"| {r['row']} | {fmt_ms(s['ours'])} | {fmt_ms(trl)} | {ratio(s['ours'], trl)} | "
            f"{fmt_ms(tunix)} | {ratio(s['ours'], tunix)} |"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="reward,dpo,sft,generate,ppo")
    parser.add_argument("--peers", default="trl,trl112,tunix")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--torch-threads",
        type=int,
        help="OMP_NUM_THREADS of the PyTorch peers (default: PyTorch's own, one per core)",
    )
    parser.add_argument("--json", help="also write the results (all step times) here")
    args = parser.parse_args()
    rows = args.rows.split(",")
    for row in rows:
        if row not in ROWS:
            parser.error(f"unknown row {row!r}; expected some of {sorted(ROWS)}")
    peers = set(args.peers.split(","))

    log_dir = tempfile.mkdtemp(prefix="bench-logs-")
    artifacts = tempfile.mkdtemp(prefix="bench-models-")
    sys.path.insert(0, str(BENCH))
    import bench_common

    bench_common.write_artifacts(artifacts)
    results = []
    for row in rows:
        results.append(
            run_row(row, artifacts, args.repeats, args.warmup, log_dir, peers, args.torch_threads)
        )
        print_table(results[-1:])
    meta = {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "versions": versions(),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "torch_threads": args.torch_threads or "default",
        "logs": log_dir,
    }
    print()
    print(json.dumps({k: v for k, v in meta.items() if k != "logs"}))
    print_table(results)
    for r in results:
        print(f"  {r['row']}: {DESCRIPTION[r['row']]}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=1))


if __name__ == "__main__":
    main()
