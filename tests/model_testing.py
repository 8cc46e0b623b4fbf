"""Tiny random HF checkpoints (torch, CPU, float32) and helpers to compare our models with them.

Every architecture variant here is 2 layers, width 64, vocabulary 128, so a forward pass or a
compile takes well under a second.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import nnx

from rlhf_jax.models import positions_from_mask

VOCAB = 128
TINY = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2)
# A larger init than HF's 0.02 makes greedy continuations vary instead of repeating one token,
# so that generation parity tests compare something.
INIT = dict(initializer_range=0.15, bos_token_id=1, eos_token_id=2, pad_token_id=0)

ARCHS = {
    "llama": lambda: transformers.LlamaConfig(
        **TINY, **INIT, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False
    ),
    "llama3_tied": lambda: transformers.LlamaConfig(
        **TINY,
        **INIT,
        num_attention_heads=4,
        num_key_value_heads=1,
        tie_word_embeddings=True,
        # Llama-3.1 scaling with a short original context, so that the smoothing band covers
        # some of the 8 frequencies of a 16-wide head.
        rope_parameters=dict(
            rope_type="llama3",
            rope_theta=500000.0,
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=64,
        ),
    ),
    "qwen2": lambda: transformers.Qwen2Config(
        **TINY, **INIT, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True
    ),
    # Qwen3: per-head q/k RMSNorm, an explicit head_dim other than D / H, and its second layer
    # sliding (max_window_layers=1) with a window shorter than the test sequences.
    "qwen3": lambda: transformers.Qwen3Config(
        **TINY,
        **INIT,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=24,
        tie_word_embeddings=True,
        use_sliding_window=True,
        sliding_window=4,
        max_window_layers=1,
    ),
    "mistral": lambda: transformers.MistralConfig(
        **TINY,
        **INIT,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=5,
        tie_word_embeddings=False,
    ),
    # Gemma 3 (text): layers 0 and 2 sliding (window 4, local RoPE base) around a global one
    # with linear rope scaling; soft-capped logits (absent from released Gemma 3 configs) so
    # that the path is compared.
    "gemma3": lambda: transformers.Gemma3TextConfig(
        **(TINY | {"num_hidden_layers": 3}),
        # √D-scaled embeddings: HF's own init scale keeps greedy continuations varied
        **(INIT | {"initializer_range": 0.02}),
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=24,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
        },
        final_logit_softcapping=3.0,
    ),
    "gpt2": lambda: transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64, **INIT
    ),
    "gpt_neox": lambda: transformers.GPTNeoXConfig(
        **TINY, **INIT, num_attention_heads=4, rotary_pct=0.5, use_parallel_residual=True
    ),
}


def make_hf_model(arch: str, seed: int = 0, cls=transformers.AutoModelForCausalLM, **overrides):
    """A random float32 HF model of `arch` in eval mode, with random (non-trivial) norm gains
    and biases so that every parameter's mapping is exercised."""
    config = ARCHS[arch]()
    for k, v in overrides.items():
        setattr(config, k, v)
    torch.manual_seed(seed)
    model = cls.from_config(config).eval()
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.2 * torch.randn_like(p))
    return model


def random_batch(seed: int, batch: int, length: int, pads=None):
    """Tokens in [3, V) and a mask; row b has `pads[b]` left pads (token 0)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, VOCAB, (batch, length)).astype(np.int32)
    mask = np.ones((batch, length), bool)
    for b, n in enumerate(pads or []):
        mask[b, :n] = False
    tokens[~mask] = 0
    return tokens, mask


@functools.cache
def _jitted_forward(graphdef, method):
    def f(params, tokens, mask):
        model = nnx.merge(graphdef, params)
        fn = model if method == "__call__" else getattr(model, method)
        return fn(tokens, positions_BxT=positions_from_mask(mask), attn_mask_BxT=mask)

    return jax.jit(f)


def forward(model, tokens, mask, method="__call__"):
    """`model(tokens, positions=positions_from_mask(mask), attn_mask=mask)`, jitted, as numpy."""
    graphdef, params = nnx.split(model)
    out = _jitted_forward(graphdef, method)(params, jnp.asarray(tokens), jnp.asarray(mask))
    return jax.tree.map(np.asarray, out)


def hf_logits(hf_model, tokens, mask):
    """HF logits with explicit position ids that count real tokens (as HF generate does)."""
    positions = np.maximum(np.cumsum(mask, axis=-1) - 1, 0)
    with torch.no_grad():
        out = hf_model(
            torch.from_numpy(tokens.astype(np.int64)),
            attention_mask=torch.from_numpy(mask.astype(np.int64)),
            position_ids=torch.from_numpy(positions),
        )
    return out.logits.numpy()


def assert_rel_close(actual, expected, *, rel: float, where=None):
    """max |actual − expected| ≤ rel · max |expected|, over the entries selected by `where`."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if where is not None:
        actual, expected = actual[where], expected[where]
    err = np.max(np.abs(actual - expected))
    scale = np.max(np.abs(expected))
    assert err <= rel * scale, f"max abs error {err:.3g} > {rel} × max |expected| {scale:.3g}"


_CHECKPOINT_ROOT = tempfile.TemporaryDirectory(prefix="rlhf_jax_hf_")  # removed at exit


@functools.cache
def hf_checkpoint(arch: str) -> tuple[Path, torch.nn.Module]:
    """(directory, hf_model): one saved tiny HF causal LM per arch, shared by all tests."""
    directory = Path(_CHECKPOINT_ROOT.name) / arch
    model = make_hf_model(arch)
    model.save_pretrained(directory)
    return directory, model
