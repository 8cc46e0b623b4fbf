"""Every GPU measurement in one run, for a machine lent for a few minutes.

1. Ceilings of this GPU, measured through JAX: a bf16 8192³ matrix product (TFLOP/s) and a
   device-to-device elementwise pass over 2 GiB (bytes read + written per second).
2. The side-by-side rows (``side_by_side.py``) on the "gpu" profile, Qwen2-0.5B with float32
   parameters computing in bfloat16, against TRL on the same GPU: PPO (batch 64, responses of
   128, split into rollout / score / update), SFT, reward model, generation, DPO.
3. Ours alone on the "gpu-1.5b" profile (Qwen2-1.5B): SFT and reward steps.
4. Our model's accelerator options (``PLAN``'s fourth column): cuDNN flash attention against
   XLA's, the reward step's pairs packed ([prompt | chosen | rejected], a mask cuDNN takes as
   a bias) against unpacked (plain causal + padding), and the remat policies "dots" and
   "block" against none. These choose the defaults on a GPU.

Then MFU of the SFT and reward steps (model FLOPs from ``bench_common.train_step_flops`` over
the median step time, against the measured matmul ceiling), and decode bandwidth (bytes a
decode step must read, ``bench_common.decode_step_bytes``, over the time per generated token,
against the measured copy ceiling). Prints the tables last; ``--out`` gets
``gpu_results.json``, ``gpu_tables.md`` and the workers' logs.

    python3 benchmarks/gpu.py --out DIR                 # everything (about 8 minutes)
    python3 benchmarks/gpu.py --out DIR --only gpu:ppo,gpu-1.5b:sft@attention=cudnn --repeats 3

Peers come from package folders (``$BENCH_PYTHONPATH_TRL``, ``$BENCH_PYTHONPATH_TRL112``);
``benchmarks/gpu_run.sh`` sets them up from carried wheels on a bare GPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import tarfile
import time

BENCH = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import bench_common as bc  # noqa: E402

# (profile, row, peers, our model options), most wanted first: a run that runs out of time keeps
# the first ones. The options are ModelConfig fields (RLHF_BENCH_MODEL, bench_common): the
# ModelConfig defaults (remat "none", XLA attention) first, then cuDNN flash attention, the reward
# step's pairs unpacked (chosen and rejected as separate rows, which cuDNN takes as plain causal
# + padding, against the packed [prompt | chosen | rejected] mask), and the remat policies. The
# 1.5B rows keep the matmul outputs only: without remat, XLA:CPU's plan for the reward step
# needs 138 GB of temporaries (benchmarks/memory.py), the whole of an H200.
PLAN = [
    ("gpu", "ppo", "trl112", ""),
    ("gpu", "sft", "trl", ""),
    ("gpu", "sft", "", "attention=cudnn"),
    ("gpu", "reward", "", "attention=cudnn"),
    ("gpu", "reward_unpacked", "", "attention=cudnn"),
    ("gpu", "generate", "trl", ""),
    ("gpu-1.5b", "sft", "", "attention=cudnn,remat=dots"),
    ("gpu-1.5b", "reward", "", "attention=cudnn,remat=dots"),
    ("gpu", "sft", "", "attention=cudnn,remat=dots"),
    ("gpu", "sft", "", "attention=cudnn,remat=block"),
    ("gpu", "reward", "trl", ""),
    ("gpu", "reward_unpacked", "", ""),
    ("gpu", "dpo", "trl", "attention=cudnn"),
]
# Rough cost of a row (start-up, compilation, warm-up and timing), to skip what cannot finish.
ROW_BUDGET_S = {
    "ppo": 150, "sft": 60, "reward": 60, "reward_unpacked": 60, "generate": 50, "dpo": 80,
}  # fmt: skip
DATASHEET_BF16_TFLOPS = 989.0  # H100/H200 SXM dense bf16, vendor datasheet
PEAK_KEYS = {"device", "jax", "matmul_n", "matmul_bf16_tflops", "copy_gbytes_per_s"}  # --peaks


def _median_time(fn, *args, inner=10, outer=5):
    import jax

    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(outer):
        t0 = time.perf_counter()
        for _ in range(inner):
            out = fn(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times)


def peaks() -> dict:
    """The GPU's matmul and copy ceilings through XLA, on random data."""
    import jax
    import jax.numpy as jnp

    small = jax.default_backend() == "cpu"  # a dry run of this script on a CPU machine
    n = 1024 if small else 8192
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), jnp.bfloat16)
    b = jax.random.normal(kb, (n, n), jnp.bfloat16)
    matmul = _median_time(jax.jit(jnp.matmul), a, b)
    x = jax.random.normal(ka, (1 << (24 if small else 30),), jnp.bfloat16)  # 2 GiB on a GPU
    copy = _median_time(jax.jit(lambda x: x + 1), x)
    return {
        "device": str(jax.devices()[0].device_kind),
        "jax": jax.__version__,
        "matmul_n": n,
        "matmul_bf16_tflops": 2 * n**3 / matmul / 1e12,
        "copy_gbytes_per_s": 2 * x.nbytes / copy / 1e9,
    }


def smoke() -> dict:
    """Our model forward and gradient on the GPU at a tiny size: does this jax/flax pair run?"""
    import flax
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from rlhf_jax import models

    cfg = models.ModelConfig(
        model_type="qwen2", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=8, mlp_dim=64, norm="rms", norm_eps=1e-6, activation="silu",
        gated_mlp=True, positions="rope", max_position_embeddings=64, rotary_dim=8,
        qkv_bias=True, tie_embeddings=True, dtype="bfloat16",
    )  # fmt: skip
    model = models.CausalLM(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    tokens = jnp.arange(16, dtype=jnp.int32).reshape(2, 8) % 64
    positions = jnp.broadcast_to(jnp.arange(8, dtype=jnp.int32), (2, 8))
    mask = jnp.ones((2, 8), bool)

    def loss(params):
        logits = nnx.merge(graphdef, params)(tokens, positions_BxT=positions, attn_mask_BxT=mask)
        return jnp.mean(logits**2)

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    assert bool(jnp.isfinite(value)), value
    return {
        "jax": jax.__version__,
        "flax": flax.__version__,
        "flax_path": str(pathlib.Path(flax.__file__).parent),
        "backend": jax.default_backend(),
        "loss": float(value),
        "grad_leaves": len(jax.tree.leaves(grads)),
    }


def plan_name(profile, row, model) -> str:
    """``gpu:sft`` or, with model options, ``gpu:sft@attention=cudnn``."""
    return f"{profile}:{row}" + (f"@{model}" if model else "")


def run_row(profile, row, peers, model, args, artifacts, logs) -> dict:
    name = plan_name(profile, row, model)
    out = pathlib.Path(f"/tmp/bench-{name.replace(':', '-').replace('@', '-')}.json")
    cmd = [sys.executable, str(BENCH / "side_by_side.py"), "--rows", row, "--peers", peers]
    cmd += ["--repeats", str(args.repeats), "--warmup", str(args.warmup), "--same-python"]
    cmd += ["--parallel-warmup", "--artifacts", artifacts, "--json", str(out)]
    cmd += ["--log-dir", str(logs)]
    env = dict(os.environ, RLHF_BENCH_PROFILE=profile, RLHF_BENCH_MODEL=model)
    t0 = time.perf_counter()
    print(f"== {name} (peers: {peers or 'none'})", flush=True)
    limit = 3 * ROW_BUDGET_S[row]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its workers too can be stopped as one group
    )  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        return {"profile": profile, "row": row, "model": model, "error": f"stopped after {limit} s"}
    print(stdout[-3000:], stderr[-2000:] if proc.returncode else "", flush=True)
    if proc.returncode or not out.exists():
        return {"profile": profile, "row": row, "model": model, "error": (stderr or stdout)[-2000:]}
    result = json.loads(out.read_text())
    result["profile"], result["row"], result["model"] = profile, row, model
    result["wall_s"] = time.perf_counter() - t0
    return result


def _label(r: dict) -> str:
    return r["row"] + (f" ({r['model']})" if r.get("model") else "")


def parse_only(text: str) -> list[tuple]:
    """``--only`` items, ``profile:row[@options]``, as plan entries (peers as the plan has them;
    an item not in the plan runs ours alone)."""
    by_name = {plan_name(p, row, model): (p, row, peers, model) for p, row, peers, model in PLAN}
    plan = []
    for name in text.split(","):
        head, _, model = name.partition("@")
        profile, sep, row = head.partition(":")
        if not sep or profile not in bc.PROFILES or row not in ROW_BUDGET_S:
            raise SystemExit(
                f"--only item {name!r}: expected profile:row[@field=value,...] with a profile of "
                f"{sorted(bc.PROFILES)} and a row of {sorted(ROW_BUDGET_S)}"
            )
        bc.parse_model_options(model)  # a bad field is named now, not in a worker
        plan.append(by_name.get(name, (profile, row, "", model)))
    return plan


def tables(summary: dict) -> str:
    lines = []
    pk = summary.get("peaks") or {}
    if pk:
        lines += [
            f"Device: {pk['device']}; jax {pk['jax']}. Measured ceilings: bf16 matmul "
            f"{pk['matmul_bf16_tflops']:.0f} TFLOP/s ({pk['matmul_n']}³), copy "
            f"{pk['copy_gbytes_per_s']:.0f} GB/s (read + write).",
            "",
        ]
    lines += [
        "| profile | row | ours (ms) | TRL (ms) | ours vs TRL |",
        "|---|---|--:|--:|--:|",
    ]
    mfu, bandwidth, splits = [], [], []
    for r in summary["rows"]:
        if "error" in r:
            lines.append(f"| {r['profile']} | {_label(r)} | failed: {r['error'][-200:]!r} | | |")
            continue
        res = r["results"][0]["sides"]
        ours = res["ours"]
        peer = res.get("trl") or res.get("trl112")

        def ms(side):
            if side is None:
                return "—"
            if side["median_s"] is None:
                return f"n/a: {(side['failure'] or '')[-160:]}"
            return f"{side['median_s'] * 1e3:,.1f}"

        ratio = "—"
        if peer and peer["median_s"] and ours["median_s"]:
            ratio = f"{peer['median_s'] / ours['median_s']:.2f}x"
        lines.append(f"| {r['profile']} | {_label(r)} | {ms(ours)} | {ms(peer)} | {ratio} |")
        p = bc.PROFILES[r["profile"]]
        if ours["median_s"] and r["row"] in ("sft", "reward", "reward_unpacked") and pk:
            flops = bc.train_step_flops(r["row"], p)
            achieved = flops / ours["median_s"] / 1e12
            mfu.append(
                f"| {r['profile']} | {_label(r)} | {flops / 1e12:.1f} | "
                f"{ours['median_s'] * 1e3:,.1f} | {achieved:.0f} | "
                f"{achieved / pk['matmul_bf16_tflops']:.1%} | "
                f"{achieved / DATASHEET_BF16_TFLOPS:.1%} |"
            )
        for side_name, side in res.items():
            parts = side.get("parts_median_s") or {}
            if parts:
                splits.append(
                    f"| {r['profile']} | {side_name} | "
                    + " | ".join(f"{parts[k] * 1e3:,.1f}" for k in ("rollout", "score", "update"))
                    + f" | {side['median_s'] * 1e3:,.1f} |"
                )
        gen = None
        if r["row"] == "generate" and ours["median_s"]:
            gen = ("generate (greedy)", p["gen_batch"], p["gen_prompt"], p["gen_new"])
            seconds = ours["median_s"]
        if r["row"] == "ppo" and ours.get("parts_median_s"):
            gen = ("PPO rollout (T 0.7)", p["ppo_batch"], p["ppo_prompt"], p["ppo_response"])
            seconds = ours["parts_median_s"]["rollout"]
        if gen and pk:
            name, b, prompt, new = gen
            need = bc.decode_step_bytes(p, batch=b, slots=prompt + new - 1)
            per_token = seconds / new
            rate = need / per_token / 1e9
            bandwidth.append(
                f"| {r['profile']} | {name} | {b} | {seconds * 1e3:,.1f} | "
                f"{per_token * 1e3:.2f} | {need / 1e9:.2f} | {rate:,.0f} | "
                f"{rate / pk['copy_gbytes_per_s']:.1%} |"
            )
    if splits:
        lines += [
            "",
            "PPO iteration split (medians, ms):",
            "",
            "| profile | side | rollout | score | update | iteration |",
            "|---|---|--:|--:|--:|--:|",
            *splits,
        ]
    if mfu:
        lines += [
            "",
            "MFU (model FLOPs, PaLM convention: bench_common.train_step_flops):",
            "",
            "| profile | row | TFLOP/step | ms | TFLOP/s | of measured matmul | of 989 datasheet |",
            "|---|---|--:|--:|--:|--:|--:|",
            *mfu,
        ]
    if bandwidth:
        lines += [
            "",
            "Decode bandwidth (bytes a step must read over the time per generated token, "
            "prefill included):",
            "",
            "| profile | run | batch | total ms | ms/token | GB/step | GB/s | of measured copy |",
            "|---|---|--:|--:|--:|--:|--:|--:|",
            *bandwidth,
        ]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/gpu-bench")
    parser.add_argument(
        "--only", help="comma-separated profile:row[@field=value...] items (as in the plan)"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--budget-s", type=float, default=540, help="skip rows past this")
    parser.add_argument(
        "--profile", help="run the plan's rows on this profile instead (qwen2-smoke: a CPU dry run)"
    )
    parser.add_argument("--peaks-json", help="ceilings measured earlier on this GPU (JSON)")
    parser.add_argument("--peaks", action="store_true", help="(internal) print the ceilings")
    parser.add_argument("--smoke", action="store_true", help="(internal) jax/flax check")
    args = parser.parse_args()
    if args.peaks or args.smoke:
        print("RESULT " + json.dumps(peaks() if args.peaks else smoke()), flush=True)
        return
    start = time.perf_counter()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logs = pathlib.Path("/tmp/gpu-bench-logs")
    logs.mkdir(exist_ok=True)
    plan = parse_only(args.only) if args.only else PLAN  # in the order given
    if args.profile:
        plan = [(args.profile, row, peers, model) for _, row, peers, model in plan]
    summary = {"date": time.strftime("%Y-%m-%d"), "plan": plan, "rows": []}
    if args.peaks_json:
        summary["peaks"] = json.loads(args.peaks_json)
        missing = PEAK_KEYS - set(summary["peaks"])
        if missing:
            parser.error(f"--peaks-json lacks {sorted(missing)} (it takes what --peaks prints)")
    else:
        r = subprocess.run(
            [sys.executable, __file__, "--peaks"], capture_output=True, text=True, env=os.environ
        )
        for line in r.stdout.splitlines():
            if line.startswith("RESULT "):
                summary["peaks"] = json.loads(line[7:])
    print("peaks:", summary.get("peaks") or r.stderr[-2000:], flush=True)

    def save():
        (out / "gpu_results.json").write_text(json.dumps(summary, indent=1))
        (out / "gpu_tables.md").write_text(tables(summary) + "\n")

    for profile, row, peers, model in plan:
        left = args.budget_s - (time.perf_counter() - start)
        if left < ROW_BUDGET_S[row]:
            summary["rows"].append(
                {
                    "profile": profile,
                    "row": row,
                    "model": model,
                    "error": f"skipped: {left:.0f} s left",
                }
            )
            continue
        artifacts = f"/tmp/bench-models-{profile}"
        summary["rows"].append(run_row(profile, row, peers, model, args, artifacts, logs))
        save()
    save()
    with tarfile.open(out / "gpu_logs.tar.gz", "w:gz") as tar:
        tar.add(logs, arcname="logs")
    print(f"\ntotal {time.perf_counter() - start:.0f} s\n")
    print(tables(summary))


if __name__ == "__main__":
    main()
