"""The same maths in JAX (XLA) and in PyTorch, with no framework around it: how fast each backend
runs the benchmark model's trunk on this machine.

The side-by-side rows time whole training steps of two frameworks. This script takes the
frameworks away: one decoder trunk (RMSNorm, RoPE, causal attention, SwiGLU; the shape of
``bench_common.PROFILE``) written twice, once in ``jax.numpy`` and once in ``torch``, forward
and backward of ``mean(h²)`` over one batch (and the forward alone), plus the bare matrix
products the trunk is made of. A third row runs our own ``Transformer`` (``rlhf_jax.models``)
on the same shape. When the plain-JAX trunk is as far behind PyTorch as our training steps
are behind TRL's, the gap is in the backend, not in the framework.

    .venv/bin/python benchmarks/same_math.py                  # both sides, a table
    .venv/bin/python benchmarks/same_math.py --torch-threads 1

Each side runs in its own process (XLA's and PyTorch's thread pools would otherwise compete).
PyTorch attention is ``scaled_dot_product_attention(is_causal=True)``, what HF models (and so
TRL) call by default; JAX attention materialises the scores as ours does. Every case is also
run without attention (``a = q + k + v`` in its place), which leaves the matrix products,
norms, RoPE and SwiGLU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import bench_common as bc
import numpy as np

# The benchmark's shape (bench_common's profile): batch, length, width, heads, MLP, layers.
SHAPE = dict(
    batch=bc.TRAIN_BATCH, seq=bc.SEQ_LEN, width=bc.WIDTH, heads=bc.HEADS, mlp=bc.MLP,
    layers=bc.LAYERS,
)  # fmt: skip
EPS = 1e-6  # RMSNorm epsilon, both sides


def matmul_shapes(shape: dict) -> list[tuple[int, int, int]]:
    """(m, k, n) of the trunk's products: q/k/v/o, MLP up/gate, MLP down, and the shape (not
    the transposed layout) of an MLP weight gradient."""
    n, d, f = shape["batch"] * shape["seq"], shape["width"], shape["mlp"]
    return [(n, d, d), (n, d, f), (n, f, d), (d, n, f)]


def init_params(shape: dict, seed: int = 0) -> tuple[list[dict], np.ndarray]:
    """Per-layer float32 weights (q/k/v/o as (D, D), heads in the second axis as H × K) and an
    input (B, T, D): the same numbers for both sides."""
    rng = np.random.default_rng(seed)
    d, f = shape["width"], shape["mlp"]

    def w(*dims):
        return (rng.standard_normal(dims) * 0.02).astype(np.float32)

    layers = [
        {"q": w(d, d), "k": w(d, d), "v": w(d, d), "o": w(d, d), "gate": w(d, f), "up": w(d, f),
         "down": w(f, d), "n1": np.ones(d, np.float32), "n2": np.ones(d, np.float32)}
        for _ in range(shape["layers"])
    ]  # fmt: skip
    x0 = rng.standard_normal((shape["batch"], shape["seq"], d)).astype(np.float32)
    return layers, x0


def rope_tables(shape: dict) -> tuple[np.ndarray, np.ndarray]:
    """sin, cos of p·θᵢ (T, K/2), θᵢ = 10000^(−2i/K), in float32 as HF computes the angles."""
    k = shape["width"] // shape["heads"]
    inv_freq = 1.0 / (10000.0 ** (np.arange(0, k, 2, dtype=np.float32) / k))
    angles = np.arange(shape["seq"], dtype=np.float32)[:, None] * inv_freq[None]
    return np.sin(angles), np.cos(angles)


def trunk_flops(shape: dict, attention: bool) -> float:
    """Forward + backward FLOPs of the trunk (3 × forward; causality not discounted)."""
    b, t, d, f = shape["batch"], shape["seq"], shape["width"], shape["mlp"]
    per_layer = 2 * b * t * (4 * d * d + 3 * d * f)
    if attention:
        per_layer += 2 * 2 * b * t * t * d
    return 3.0 * shape["layers"] * per_layer


def jax_loss(shape: dict, attention: bool = True):
    """mean(h²) of the trunk's output h, in jax.numpy: ``loss(params, x0)``."""
    trunk = jax_trunk(shape, attention)

    def loss(params, x0):
        h = trunk(params, x0)
        return (h * h).mean()

    return loss


def jax_trunk(shape: dict, attention: bool = True):
    """The trunk in jax.numpy: ``trunk(params, x0)`` → h (B, T, D), before any final norm."""
    import jax
    import jax.numpy as jnp

    b, t, h = shape["batch"], shape["seq"], shape["heads"]
    k = shape["width"] // h
    sin, cos = (jnp.asarray(a)[None, :, None] for a in rope_tables(shape))
    causal = jnp.tril(jnp.ones((t, t), bool))

    def norm(x, g):
        return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + EPS) * g[None, None]

    def rope(x):
        x1, x2 = x[..., : k // 2], x[..., k // 2 :]
        return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

    def layer(x, p):
        y = norm(x, p["n1"])
        q, kk, v = ((y @ p[n]).reshape(b, t, h, k) for n in "qkv")
        q, kk = rope(q), rope(kk)
        if attention:
            s = jnp.einsum("bthk,bshk->bhts", q, kk) * k**-0.5
            s = jnp.where(causal[None, None], s, jnp.finfo(jnp.float32).min)
            a = jnp.einsum("bhts,bshk->bthk", jax.nn.softmax(s, -1), v)
        else:
            a = q + kk + v
        x = x + a.reshape(b, t, h * k) @ p["o"]
        y = norm(x, p["n2"])
        return x + (jax.nn.silu(y @ p["gate"]) * (y @ p["up"])) @ p["down"]

    def trunk(params, x0):
        x = x0
        for p in params:
            x = layer(x, p)
        return x

    return trunk


def torch_loss(shape: dict, attention: bool = True):
    """The same function in torch (attention: ``scaled_dot_product_attention``, as HF calls it)."""
    import torch
    import torch.nn.functional as fn

    b, t, h = shape["batch"], shape["seq"], shape["heads"]
    k = shape["width"] // h
    sin, cos = (torch.from_numpy(a)[None, None] for a in rope_tables(shape))

    def norm(x, g):
        return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + EPS) * g

    def rope(x):
        x1, x2 = x[..., : k // 2], x[..., k // 2 :]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

    def layer(x, p):
        y = norm(x, p["n1"])
        q, kk, v = ((y @ p[n]).view(b, t, h, k).transpose(1, 2) for n in "qkv")
        q, kk = rope(q), rope(kk)
        a = fn.scaled_dot_product_attention(q, kk, v, is_causal=True) if attention else q + kk + v
        x = x + a.transpose(1, 2).reshape(b, t, h * k) @ p["o"]
        y = norm(x, p["n2"])
        return x + (fn.silu(y @ p["gate"]) * (y @ p["up"])) @ p["down"]

    def loss(params, x0):
        x = x0
        for p in params:
            x = layer(x, p)
        return (x * x).mean()

    return loss


def transformer_with(shape: dict, params: list[dict], vocab: int):
    """Our `Transformer` (Llama: RMSNorm, RoPE, SwiGLU, no biases, untied) holding ``params``."""
    from flax import nnx

    from rlhf_jax import models

    h = shape["heads"]
    d, k = shape["width"], shape["width"] // h
    cfg = models.ModelConfig(
        model_type="llama", vocab_size=vocab, hidden_size=d, num_layers=shape["layers"],
        num_heads=h, num_kv_heads=h, head_dim=k, mlp_dim=shape["mlp"], norm="rms",
        norm_eps=EPS, activation="silu", gated_mlp=True, positions="rope",
        max_position_embeddings=shape["seq"], rotary_dim=k,
    )  # fmt: skip
    model = models.Transformer(cfg, rngs=nnx.Rngs(0))

    # The layers are one stacked block: each parameter has a leading layer axis.
    def stacked(name, shape):
        return np.stack([np.asarray(p[name]).reshape(shape) for p in params])

    block = model.layers
    block.attn.q.kernel[...] = stacked("q", (d, h, k))
    block.attn.k.kernel[...] = stacked("k", (d, h, k))
    block.attn.v.kernel[...] = stacked("v", (d, h, k))
    block.attn.o.kernel[...] = stacked("o", (h, k, d))
    block.mlp.gate.kernel[...] = stacked("gate", params[0]["gate"].shape)
    block.mlp.up.kernel[...] = stacked("up", params[0]["up"].shape)
    block.mlp.down.kernel[...] = stacked("down", params[0]["down"].shape)
    block.attn_norm.scale[...] = stacked("n1", params[0]["n1"].shape)
    block.mlp_norm.scale[...] = stacked("n2", params[0]["n2"].shape)
    return model


def _measure(out: dict, case: str, flops: float, fn, args: tuple, repeats: int) -> None:
    """Times ``fn(*args)`` after 3 untimed calls (compilation included) and records, under
    ``case``, the median wall time in ms with ``flops`` in ``out["cases"]``, and the process's
    minor page faults per timed call (memory the call maps in afresh) in
    ``out["minor_faults_per_call"]``."""
    for _ in range(3):
        fn(*args)
    times = []
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    out["cases"][case] = (1000 * statistics.median(times), flops)
    out.setdefault("minor_faults_per_call", {})[case] = faults / repeats


def run_jax(repeats: int, shape: dict = SHAPE) -> dict:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from rlhf_jax import xla_options

    opts = xla_options.compiler_options()
    out = {"backend": f"jax {jax.__version__}", "compiler_options": opts, "cases": {}}
    out["glibc_tunables"] = os.environ.get("GLIBC_TUNABLES", "")
    rng = np.random.default_rng(0)
    matmul = jax.jit(lambda a, b: a @ b, compiler_options=opts)
    for m, k, n in matmul_shapes(shape):
        a = jnp.asarray(rng.standard_normal((m, k), np.float32))
        b = jnp.asarray(rng.standard_normal((k, n), np.float32))
        run = lambda *ab: matmul(*ab).block_until_ready()
        _measure(out, f"matmul {m}x{k}x{n}", 2 * m * k * n, run, (a, b), repeats)

    params, x0 = init_params(shape)
    params, x0 = jax.tree.map(jnp.asarray, (params, x0))
    for attention in (True, False):
        grad = jax.jit(jax.grad(jax_loss(shape, attention)), compiler_options=opts)
        case = "trunk" if attention else "trunk, no attention"
        run = lambda p, x, g=grad: jax.block_until_ready(g(p, x))
        _measure(out, case, trunk_flops(shape, attention), run, (params, x0), repeats)
    forward = jax.jit(jax_loss(shape), compiler_options=opts)
    run = lambda p, x: jax.block_until_ready(forward(p, x))
    _measure(out, "trunk, forward only", trunk_flops(shape, True) / 3, run, (params, x0), repeats)

    model = transformer_with(shape, init_params(shape)[0], vocab=bc.VOCAB)
    graphdef, state = nnx.split(model)
    b, t = shape["batch"], shape["seq"]
    tokens = jnp.asarray(rng.integers(3, bc.VOCAB, (b, t)), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    mask = jnp.ones((b, t), bool)

    def ours_loss(state):
        h, _ = nnx.merge(graphdef, state)(tokens, positions_BxT=positions, attn_mask_BxT=mask)
        return jnp.mean(h * h)

    grad = jax.jit(jax.grad(ours_loss), compiler_options=opts)
    run = lambda s: jax.block_until_ready(grad(s))
    _measure(out, "rlhf_jax Transformer", trunk_flops(shape, True), run, (state,), repeats)
    return out


def run_torch(repeats: int, shape: dict = SHAPE) -> dict:
    import torch

    out = {"backend": f"torch {torch.__version__}, {torch.get_num_threads()} threads", "cases": {}}
    gen = torch.Generator().manual_seed(0)
    for m, k, n in matmul_shapes(shape):
        a, b = torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)
        _measure(out, f"matmul {m}x{k}x{n}", 2 * m * k * n, torch.matmul, (a, b), repeats)

    params, x0 = init_params(shape)
    params = [{n: torch.from_numpy(w).requires_grad_() for n, w in p.items()} for p in params]
    x0 = torch.from_numpy(x0)
    for attention in (True, False):
        loss = torch_loss(shape, attention)
        case = "trunk" if attention else "trunk, no attention"
        run = lambda f=loss: f(params, x0).backward()
        _measure(out, case, trunk_flops(shape, attention), run, (), repeats)
    loss = torch_loss(shape)
    with torch.no_grad():
        _measure(
            out, "trunk, forward only", trunk_flops(shape, True) / 3, loss, (params, x0), repeats
        )
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", choices=["jax", "torch"], help="run one side, print JSON")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--torch-threads", type=int, help="OMP_NUM_THREADS of the torch side")
    parser.add_argument("--json", help="also write both sides' results here")
    args = parser.parse_args()
    if bc.DEVICE != "cpu":
        parser.error(
            f"the {bc.PROFILE_NAME!r} profile is not a CPU profile; this script is CPU-only"
        )
    if args.side:
        result = (run_jax if args.side == "jax" else run_torch)(args.repeats)
        print("RESULT " + json.dumps(result))
        return
    results = {}
    for side in ("jax", "torch"):
        env = dict(os.environ)
        if side == "torch" and args.torch_threads:
            env["OMP_NUM_THREADS"] = str(args.torch_threads)
        cmd = [sys.executable, __file__, "--side", side, "--repeats", str(args.repeats)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not lines:
            sys.exit(f"the {side} side failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        results[side] = json.loads(lines[-1][len("RESULT ") :])
    jx, pt = results["jax"], results["torch"]
    print(f"{jx['backend']} vs {pt['backend']}; {SHAPE}\n")
    print(f"GLIBC_TUNABLES={jx['glibc_tunables']!r}\n")
    print(
        "| case | JAX (ms) | GFLOP/s | page faults / call | PyTorch (ms) | GFLOP/s "
        "| page faults / call | PyTorch / JAX time |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    for case, (ms, flops) in jx["cases"].items():
        faults = jx["minor_faults_per_call"][case]
        row = f"| {case} | {ms:,.1f} | {flops / ms / 1e6:,.0f} | {faults:,.0f} |"
        if case in pt["cases"]:
            pms, pflops = pt["cases"][case]
            pfaults = pt["minor_faults_per_call"][case]
            row += f" {pms:,.1f} | {pflops / pms / 1e6:,.0f} | {pfaults:,.0f} | {pms / ms:.2f}x |"
        else:
            row += " — | — | — | — |"
        print(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
