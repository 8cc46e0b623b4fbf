"""Sampling throughput: our compiled KV-cache sampler vs HF `generate` (PyTorch), side by side.

Same random tiny Llama (default: 4 layers, width 256, vocab 1024) in both, same left-padded
prompt batch, same number of new tokens; EOS disabled so that both generate every token.
Prints tokens/s of each and the ratio. CPU by default.

    .venv/bin/python benchmarks/generate.py                      # batch 16, prompt 32, 64 new
    .venv/bin/python benchmarks/generate.py --batch 64 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import nnx

from rlhf_jax.generation import SamplingConfig, generate
from rlhf_jax.models import load_pretrained


def _timed_interleaved(fns, repeats):
    """Min wall time of each fn over `repeats` rounds, the fns alternating within a round, so
    that load from other processes on a shared machine hits both sides alike."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - start)
    # The minimum: noise only ever adds time.
    return [min(ts) for ts in times]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--mode", choices=["greedy", "sample"], default="greedy")
    args = parser.parse_args()

    config = transformers.LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.width,
        intermediate_size=4 * args.width,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=2048,
        initializer_range=0.1,
        bos_token_id=1,
        eos_token_id=None,  # no EOS: both sides generate every token
        pad_token_id=0,
    )
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(config).eval()
    with tempfile.TemporaryDirectory() as directory:
        hf.save_pretrained(directory)
        model = load_pretrained(directory)

    b, p, n = args.batch, args.prompt_len, args.new_tokens
    rng = np.random.default_rng(0)
    prompt = rng.integers(3, args.vocab, (b, p)).astype(np.int32)
    mask = np.ones((b, p), bool)
    for row in range(b):  # ragged left padding, as real prompt batches have
        mask[row, : rng.integers(0, p // 2)] = False
    prompt[~mask] = 0

    temperature = 0.0 if args.mode == "greedy" else 1.0
    sampling = SamplingConfig(max_new_tokens=n, temperature=temperature, eos_ids=(), pad_id=0)
    graphdef, params = nnx.split(model)
    prompt_j, mask_j = jnp.asarray(prompt), jnp.asarray(mask)

    def ours():
        out = generate(graphdef, params, prompt_j, mask_j, jax.random.key(0), config=sampling)
        jax.block_until_ready(out)
        return out

    compile_start = time.perf_counter()
    out = ours()
    compile_s = time.perf_counter() - compile_start
    assert int(out.num_steps) == n

    prompt_t, mask_t = (
        torch.from_numpy(prompt.astype(np.int64)),
        torch.from_numpy(mask.astype(np.int64)),
    )

    def theirs():
        with torch.no_grad():
            return hf.generate(
                prompt_t,
                attention_mask=mask_t,
                do_sample=args.mode == "sample",
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=n,
                pad_token_id=0,
            )

    theirs()  # warm-up
    ours_s, hf_s = _timed_interleaved([ours, theirs], args.repeats)
    if args.mode == "greedy":  # the same model: the same tokens
        np.testing.assert_array_equal(np.asarray(out.tokens_BxN), theirs()[:, p:].numpy())

    tokens = b * n
    print(
        f"model: llama {args.layers} layers, width {args.width}, {args.heads} heads, "
        f"vocab {args.vocab}; batch {b}, prompt {p}, new tokens {n}, {args.mode}; "
        f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)"
    )
    print(f"ours (compile {compile_s:.1f}s): {ours_s * 1e3:8.1f} ms  {tokens / ours_s:9.0f} tok/s")
    print(f"HF generate:          {hf_s * 1e3:8.1f} ms  {tokens / hf_s:9.0f} tok/s")
    print(f"ratio ours/HF: {hf_s / ours_s:.2f}x")


if __name__ == "__main__":
    main()
