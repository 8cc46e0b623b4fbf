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
import re
import statistics
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))
import bench_common as bc  # noqa: E402  (numpy only; its profile comes from RLHF_BENCH_PROFILE)

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
    # Ours with each pair as two rows (DPOLossConfig/RewardLossConfig.share_prompt=False): the
    # A/B of prompt sharing, against the same peers.
    "reward_unpacked": ("reward_unpacked", ("trl",)),
    "dpo_unpacked": ("dpo_unpacked", ("trl", "tunix")),
}
# PyTorch's OpenMP pool is fragile on a shared machine: with other processes on the 2 cores,
# its 2 threads wait on each other at every op's barrier. A plain forward/backward of the LM at
# 16 x 128 took 3.7-4.8 s with 2 threads and 0.66-0.86 s with 1, alternating runs under the
# same load (XLA's pool degrades far less). ``--torch-threads`` sets the peers' thread count.
TORCH_SIDES = ("trl", "trl112")
_B, _T, _R = bc.TRAIN_BATCH, bc.SEQ_LEN, bc.RESPONSE_LEN
DESCRIPTION = {
    "reward": f"reward-model step, {_B} pairs × {_T} tokens",
    "dpo": f"DPO step (policy + in-step reference), {_B} pairs × {_T}",
    "sft": f"SFT step, {_B} × {_T} (loss on the last {_R})",
    "generate": f"generation, batch {bc.GEN_BATCH}, prompt {bc.GEN_PROMPT}, "
    f"{bc.GEN_NEW} new tokens (greedy)",
    "ppo": f"PPO iteration, {bc.PPO_BATCH} episodes, prompt {bc.PPO_PROMPT} + response "
    f"{bc.PPO_RESPONSE}, {bc.PPO_EPOCHS} epochs × {bc.PPO_MINIBATCHES} minibatches",
    "ppo_fused": "the same PPO iteration, ours fused into one XLA program",
    "sft_full": f"the SFT step with logits at all {_T} positions (no response window)",
    "dpo_full": f"the DPO step with logits at all {_T} positions (no response window)",
    "reward_unpacked": "the reward step with chosen and rejected as separate rows",
    "dpo_unpacked": "the DPO step with chosen and rejected as separate rows",
}


def side_python(side, same_python):
    """(interpreter, extra PYTHONPATH) of a side: its virtualenv's python, or with
    ``same_python`` this interpreter for every side plus ``$BENCH_PYTHONPATH_<SIDE>`` (where a
    machine holds the peers as package folders rather than virtualenvs)."""
    if same_python:
        return pathlib.Path(sys.executable), os.environ.get(f"BENCH_PYTHONPATH_{side.upper()}")
    return ROOT / SIDES[side][0] / "bin" / "python", None


class Worker:
    def __init__(
        self,
        side,
        row,
        artifacts,
        warmup,
        log_dir,
        torch_threads=None,
        same_python=False,
        shared_gpu=True,
    ):
        venv, script = SIDES[side]
        python, extra_path = side_python(side, same_python)
        self.side, self.failure, self.info, self.proc = side, None, {}, None
        self.log = pathlib.Path(log_dir) / f"{row}-{side}.log"
        if not python.exists():
            self.failure = f"{venv} missing: run `bash benchmarks/setup_peers.sh`"
            return
        env = dict(
            os.environ,
            JAX_PLATFORMS=bc.JAX_PLATFORMS,
            TOKENIZERS_PARALLELISM="false",
            HF_HUB_OFFLINE="1",
            HF_DATASETS_OFFLINE="1",
            TRANSFORMERS_VERBOSITY="error",
            PYTHONWARNINGS="ignore",
        )
        if extra_path:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [extra_path, env.get("PYTHONPATH")]))
        if bc.DEVICE == "gpu":
            # JAX grows its pool as it needs (up to a cap) instead of taking 75% of the GPU
            # up front, so that the PyTorch side of the row finds memory too.
            env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
            env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.6" if shared_gpu else "0.9")
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

    def wait_ready(self):
        if self.failure:
            return
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
        """The worker's exception line (JAX prints a note on filtered frames after it), else
        its last line."""
        lines = [x for x in self.log.read_text().splitlines() if x.strip()]
        errors = [x for x in lines if re.match(r"[A-Za-z_][\w.]*(Error|Exception|Exit): ", x)]
        return (errors or lines or ["(no output)"])[-1][-300:]

    def step(self) -> tuple[float, dict] | None:
        """One step: (seconds, the worker's part times, e.g. PPO's rollout/score/update)."""
        if self.failure:
            return None
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        kind, payload = self._read()
        if kind != "TIME":
            self.failure = f"worker died during timing (log: {self.log}): {self._tail()}"
            return None
        seconds, _, parts = payload.partition(" ")
        return float(seconds), json.loads(parts) if parts else {}

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=60)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()


def run_row(
    row,
    artifacts,
    repeats,
    warmup,
    log_dir,
    peers,
    torch_threads,
    *,
    same_python=False,
    parallel_warmup=False,
):
    """Warms every side up (one at a time, or all at once with ``parallel_warmup``: no side is
    timed until all are ready), then times ``repeats`` rounds, one step per side in turn."""
    ours_row, row_peers = ROWS[row]
    sides = ["ours", *[p for p in row_peers if p in peers]]
    workers = []
    for side in sides:
        print(f"[{row}] warming up {side}", file=sys.stderr, flush=True)
        side_row = (
            ours_row if side == "ours" else row.removesuffix("_fused").removesuffix("_unpacked")
        )
        w = Worker(
            side,
            side_row,
            artifacts,
            warmup,
            log_dir,
            torch_threads,
            same_python,
            shared_gpu=len(sides) > 1,
        )
        if not parallel_warmup:  # a compiling side would slow a timed one
            w.wait_ready()
        workers.append(w)
    if parallel_warmup:
        for w in workers:
            w.wait_ready()
    times = {w.side: [] for w in workers}
    parts = {w.side: [] for w in workers}
    for _ in range(repeats):
        for w in workers:
            t = w.step()
            if t is not None:
                times[w.side].append(t[0])
                parts[w.side].append(t[1])
    for w in workers:
        w.close()
    result = {"row": row, "sides": {}}
    for w in workers:
        ts = times[w.side]
        names = sorted({k for p in parts[w.side] for k in p})
        result["sides"][w.side] = {
            "median_s": statistics.median(ts) if ts and not w.failure else None,
            "times_s": ts,
            "parts_median_s": {
                k: statistics.median(p[k] for p in parts[w.side] if k in p) for k in names
            },
            "failure": w.failure,
            "info": w.info,
        }
    return result


def versions(same_python=False, sides=tuple(SIDES)):
    out = {"python": platform.python_version()}
    for side in sides:
        python, extra_path = side_python(side, same_python)
        if not python.exists():
            continue
        env = dict(os.environ)
        if extra_path:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [extra_path, env.get("PYTHONPATH")]))
        mods = {"ours": "jax torch", "trl": "trl", "trl112": "trl", "tunix": "tunix jax"}[side]
        code = (
            "import importlib.metadata as m, sys\n"
            "names = {'jax':'jax','torch':'torch','trl':'trl','tunix':'google-tunix'}\n"
            "print(' '.join(f'{k}={m.version(names[k])}' for k in sys.argv[1:]))"
        )
        r = subprocess.run(
            [str(python), "-c", code, *mods.split()], capture_output=True, text=True, env=env
        )
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


def gpu_model():
    try:
        r = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        )
        return r.stdout.strip() or r.stderr.strip()
    except OSError as e:
        return f"nvidia-smi: {e}"


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
    parser.add_argument("--log-dir", help="where the workers' logs go (default: a temp folder)")
    parser.add_argument(
        "--artifacts", help="checkpoint folder to reuse (written there first if it is empty)"
    )
    parser.add_argument(
        "--same-python",
        action="store_true",
        help="run every side with this interpreter (plus $BENCH_PYTHONPATH_<SIDE>), not .venv*",
    )
    parser.add_argument(
        "--parallel-warmup",
        action="store_true",
        help="warm all sides of a row up at once (on a GPU machine with cores to spare)",
    )
    args = parser.parse_args()
    rows = args.rows.split(",")
    for row in rows:
        if row not in ROWS:
            parser.error(f"unknown row {row!r}; expected some of {sorted(ROWS)}")
    peers = set(args.peers.split(","))

    log_dir = args.log_dir or tempfile.mkdtemp(prefix="bench-logs-")
    os.makedirs(log_dir, exist_ok=True)
    artifacts = args.artifacts or tempfile.mkdtemp(prefix="bench-models-")
    if not (pathlib.Path(artifacts) / "rm" / "config.json").exists():
        bc.write_artifacts(artifacts)
    results = []
    for row in rows:
        results.append(
            run_row(
                row,
                artifacts,
                args.repeats,
                args.warmup,
                log_dir,
                peers,
                args.torch_threads,
                same_python=args.same_python,
                parallel_warmup=args.parallel_warmup,
            )
        )
        print_table(results[-1:])
    meta = {
        "date": datetime.date.today().isoformat(),
        "profile": bc.PROFILE_NAME,
        "cpu": cpu_model(),
        "gpu": gpu_model() if bc.DEVICE == "gpu" else None,
        "cores": os.cpu_count(),
        "versions": versions(args.same_python, [s for s in SIDES if s in {"ours", *peers}]),
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
        for side, res in r["sides"].items():
            if res["parts_median_s"]:
                split = ", ".join(f"{k} {v * 1e3:,.0f}" for k, v in res["parts_median_s"].items())
                print(f"    {side} split (ms, medians): {split}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=1))


if __name__ == "__main__":
    main()
