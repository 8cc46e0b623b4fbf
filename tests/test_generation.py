"""The compiled sampler: HF greedy parity, log-probs PPO can trust, filters, EOS handling,
determinism and a single trace per shape."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from model_testing import ARCHS, forward, hf_checkpoint, random_batch

from rlhf_jax import losses
from rlhf_jax.generation import SamplingConfig, filter_logits, generate, sample, sample_token
from rlhf_jax.generation.generate import compute_dtype_matrices
from rlhf_jax.models import load_pretrained

PAD, EOS = 0, 2
PROMPT_PADS = [0, 2, 4]


def _prompts(seed=0, batch=3, length=7):
    return random_batch(seed, batch, length, pads=PROMPT_PADS[:batch])


def _run(model, tokens, mask, key=0, **config):
    graphdef, params = nnx.split(model)
    config = SamplingConfig(**{"eos_ids": (EOS,), "pad_id": PAD, **config})
    out = generate(
        graphdef, params, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(key), config=config
    )
    return jax.tree.map(np.asarray, out)


def _rescore(model, prompt, prompt_mask, out, temperature):
    """Log-probs of the sampled tokens from one full forward pass, as PPO computes them."""
    tokens = np.concatenate([prompt, out.tokens_BxN], axis=1)
    mask = np.concatenate([prompt_mask, out.mask_BxN], axis=1)
    logits = forward(model, tokens, mask)
    p = prompt.shape[1]
    logp, _ = losses.sequence_logprobs(
        logits[:, p - 1 : -1], out.tokens_BxN, out.mask_BxN, temperature=temperature
    )
    return np.asarray(logp), logits[:, p - 1 : -1]


@pytest.mark.parametrize("arch", list(ARCHS))
def test_greedy_matches_hf_generate(arch):
    directory, hf = hf_checkpoint(arch)
    prompt, mask = _prompts()
    out = _run(load_pretrained(directory), prompt, mask, max_new_tokens=12, temperature=0.0)
    with torch.no_grad():
        expected = hf.generate(
            torch.from_numpy(prompt.astype(np.int64)),
            attention_mask=torch.from_numpy(mask.astype(np.int64)),
            do_sample=False,
            max_new_tokens=12,
            eos_token_id=EOS,
            pad_token_id=PAD,
        )[:, prompt.shape[1] :].numpy()
    expected = np.pad(expected, ((0, 0), (0, 12 - expected.shape[1])), constant_values=PAD)
    np.testing.assert_array_equal(out.tokens_BxN, expected)
    assert len(np.unique(out.tokens_BxN)) > 4  # the comparison is not of a constant sequence


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_logprobs_equal_a_full_forward_rescore(arch):
    """So that PPO's first ratio π/π_old is 1: same temperature, unfiltered distribution."""
    model = load_pretrained(hf_checkpoint(arch)[0])
    prompt, mask = _prompts(1)
    out = _run(model, prompt, mask, key=1, max_new_tokens=16, temperature=0.7, top_k=20, top_p=0.9)
    rescored, _ = _rescore(model, prompt, mask, out, temperature=0.7)
    assert out.mask_BxN.sum() > 20
    # Decoding one token against the cache and the full forward sum in different orders, so
    # their float32 logits differ by a few ulps (~1e-6 relative); what PPO needs is the ratio.
    ratio = np.exp(out.logprobs_BxN - rescored)
    np.testing.assert_allclose(ratio, 1.0, rtol=0, atol=1e-5)


def _frequencies(logits, n, **config):
    keys = jax.random.split(jax.random.key(0), n)
    cfg = SamplingConfig(max_new_tokens=1, **config)
    tokens = jax.vmap(lambda k: sample_token(logits, k, cfg)[0])(keys)  # (n, B)
    v = logits.shape[-1]
    return np.stack([np.bincount(np.asarray(tokens[:, b]), minlength=v) / n for b in range(2)])


@pytest.mark.parametrize(
    ("top_k", "top_p", "allowed"),
    [
        (3, 1.0, [[0, 1, 2], [9, 8, 7]]),
        # Probabilities .4 .25 .15 .08 …: the mass before the 3rd token is .65 < .7, before the
        # 4th it is .8, so p = .7 keeps 3 tokens.
        (0, 0.7, [[0, 1, 2], [9, 8, 7]]),
        (2, 0.7, [[0, 1], [9, 8]]),
    ],
)
def test_top_k_top_p_never_emit_filtered_tokens(top_k, top_p, allowed):
    probs = np.array([0.4, 0.25, 0.15, 0.08, 0.05, 0.03, 0.02, 0.01, 0.006, 0.004])
    logits = jnp.asarray(np.log(np.stack([probs, probs[::-1]])), jnp.float32)
    freq = _frequencies(logits, 4000, temperature=1.0, top_k=top_k, top_p=top_p)
    for b, keep in enumerate(allowed):
        mask = np.isin(np.arange(10), keep)
        assert freq[b, ~mask].sum() == 0, f"row {b} emitted a filtered token"
        renormalised = np.exp(logits[b])[mask] / np.exp(logits[b])[mask].sum()
        np.testing.assert_allclose(freq[b, mask], renormalised, atol=0.03)
    # The filter itself: exactly the allowed tokens survive.
    kept = np.isfinite(np.asarray(filter_logits(logits, top_k=top_k, top_p=top_p)))
    for b, keep in enumerate(allowed):
        np.testing.assert_array_equal(np.flatnonzero(kept[b]), sorted(keep))


def test_filters_keep_ties_at_the_cut():
    logits = jnp.array([[3.0, 1.0, 1.0, 0.0]])
    kept = np.isfinite(np.asarray(filter_logits(logits, top_k=2, top_p=1.0)))
    np.testing.assert_array_equal(kept, [[True, True, True, False]])


def test_top_k_in_generation_only_emits_top_k_tokens():
    model = load_pretrained(hf_checkpoint("qwen2")[0])
    prompt, mask = _prompts(2)
    out = _run(model, prompt, mask, key=2, max_new_tokens=16, temperature=1.5, top_k=4)
    _, logits = _rescore(model, prompt, mask, out, temperature=1.5)
    rank = np.sum(logits > np.take_along_axis(logits, out.tokens_BxN[..., None], -1), axis=-1)
    assert np.all(rank[out.mask_BxN] < 4)
    assert np.any(rank[out.mask_BxN] > 0)  # it does sample, not only take the argmax


def test_greedy_is_the_zero_temperature_limit():
    model = load_pretrained(hf_checkpoint("llama")[0])
    prompt, mask = _prompts(3)
    greedy = _run(model, prompt, mask, max_new_tokens=10, temperature=0.0)
    cold = _run(model, prompt, mask, key=5, max_new_tokens=10, temperature=1e-4)
    np.testing.assert_array_equal(cold.tokens_BxN, greedy.tokens_BxN)
    # Greedy log-probs are those of the T = 1 distribution.
    rescored, _ = _rescore(model, prompt, mask, greedy, temperature=1.0)
    np.testing.assert_allclose(np.exp(greedy.logprobs_BxN - rescored), 1.0, rtol=0, atol=1e-5)


def test_eos_stops_each_row_pads_after_and_exits_early():
    model = load_pretrained(hf_checkpoint("gpt2")[0])
    prompt, mask = _prompts(4)
    free = _run(model, prompt, mask, max_new_tokens=10, temperature=0.0, eos_ids=())
    assert int(free.num_steps) == 10
    # Make each row's 2nd or 3rd token an EOS: every row then stops by step 3 of 10.
    eos = tuple(sorted({int(t) for t in free.tokens_BxN[:, 2]}))
    out = _run(model, prompt, mask, max_new_tokens=10, temperature=0.0, eos_ids=eos)
    stops = [int(np.flatnonzero(np.isin(row, eos))[0]) for row in free.tokens_BxN]
    assert max(stops) <= 2
    for b, stop in enumerate(stops):
        np.testing.assert_array_equal(out.tokens_BxN[b, : stop + 1], free.tokens_BxN[b, : stop + 1])
        np.testing.assert_array_equal(out.tokens_BxN[b, stop + 1 :], PAD)
        np.testing.assert_array_equal(out.mask_BxN[b], np.arange(10) <= stop)
        np.testing.assert_array_equal(out.logprobs_BxN[b, stop + 1 :], 0.0)
    assert int(out.num_steps) == max(stops) + 1  # the loop stopped when the last row finished


def test_deterministic_per_key_and_traces_once_per_shape():
    model = load_pretrained(hf_checkpoint("llama3_tied")[0])
    graphdef, params = nnx.split(model)
    traced = jax.jit(
        chex.assert_max_traces(sample, n=2), static_argnums=0, static_argnames="config"
    )
    config = SamplingConfig(max_new_tokens=8, temperature=1.0, eos_ids=(EOS,), pad_id=PAD)
    runs = []
    for seed, key in [(0, 0), (1, 0), (0, 1), (0, 0)]:
        prompt, mask = _prompts(seed)
        out = traced(graphdef, params, prompt, mask, jax.random.key(key), config=config)
        runs.append(jax.tree.map(np.asarray, out))
    np.testing.assert_array_equal(runs[0].tokens_BxN, runs[3].tokens_BxN)
    np.testing.assert_array_equal(runs[0].logprobs_BxN, runs[3].logprobs_BxN)
    assert not np.array_equal(runs[0].tokens_BxN, runs[2].tokens_BxN)
    # A new max_new_tokens is a new shape: the second (and last allowed) trace.
    prompt, mask = _prompts(0)
    longer = SamplingConfig(max_new_tokens=9, temperature=1.0, eos_ids=(EOS,), pad_id=PAD)
    traced(graphdef, params, prompt, mask, jax.random.key(0), config=longer)
    with pytest.raises(AssertionError, match="traced > 2 times"):
        traced(graphdef, params, prompt[:2], mask[:2], jax.random.key(0), config=longer)


def test_bad_sampling_settings_are_rejected():
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(max_new_tokens=4, top_p=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingConfig(max_new_tokens=0)
    model = load_pretrained(hf_checkpoint("gpt2")[0])  # 64 learned positions
    prompt, mask = _prompts()
    with pytest.raises(ValueError, match="exceeds the model's max_position_embeddings 64"):
        _run(model, prompt, mask, max_new_tokens=58)


@pytest.mark.parametrize("arch", ["llama3_tied", "gpt2"])
def test_mixed_precision_decode_reads_matrices_in_the_compute_dtype(arch):
    """float32 parameters computing in bfloat16: the sampler casts the matrices once, before the
    decode loop. The layers cast them on use anyway, so the forward is bit-identical; vectors
    (norm scales, biases: LayerNorm uses them in float32) keep their storage dtype."""
    model = load_pretrained(hf_checkpoint(arch)[0], dtype="bfloat16")
    graphdef, params = nnx.split(model)
    cast = compute_dtype_matrices(params, "bfloat16")
    for (path, before), after in zip(
        jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(cast), strict=True
    ):
        name = jax.tree_util.keystr(path)
        # A scanned block's parameters carry a leading layers axis: a layer's norm scale is
        # (L, D), still a vector.
        per_layer_ndim = before.ndim - ("['layers']" in name)
        expected = jnp.bfloat16 if per_layer_ndim >= 2 else jnp.float32
        assert after.dtype == expected, (name, after.dtype)
    prompt, mask = _prompts()
    np.testing.assert_array_equal(
        forward(nnx.merge(graphdef, cast), prompt, mask), forward(model, prompt, mask)
    )
    outs = [
        _run(nnx.merge(graphdef, p), prompt, mask, max_new_tokens=8, temperature=1.0)
        for p in (params, cast)
    ]
    np.testing.assert_array_equal(outs[0].tokens_BxN, outs[1].tokens_BxN)
    np.testing.assert_array_equal(outs[0].logprobs_BxN, outs[1].logprobs_BxN)
