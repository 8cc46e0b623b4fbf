"""Log-probs and entropy from logits against float64 references."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from loss_testing import POISONS, poison, random_mask, shapes_and_seeds

from rlhf_jax import losses


def log_softmax_reference(logits):
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


@given(shapes_and_seeds, st.integers(2, 17), st.sampled_from([1.0, 0.7, 1.9]))
def test_sequence_logprobs_matches_reference(shape_seed, vocab, temperature):
    seed, batch, time = shape_seed
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (batch, time, vocab)).astype(np.float32)
    tokens = rng.integers(0, vocab, (batch, time))
    mask = random_mask(rng, (batch, time))
    token_logp, seq_logp = losses.sequence_logprobs(logits, tokens, mask, temperature=temperature)
    logp = log_softmax_reference(logits / np.float64(temperature))
    expected = np.take_along_axis(logp, tokens[..., None], -1)[..., 0] * mask
    np.testing.assert_allclose(token_logp, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(seq_logp, expected.sum(-1), rtol=1e-5, atol=1e-4)
    assert token_logp.dtype == jnp.float32


@given(shapes_and_seeds, st.integers(2, 17))
def test_entropy_matches_reference(shape_seed, vocab):
    seed, batch, time = shape_seed
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (batch, time, vocab)).astype(np.float32)
    mask = random_mask(rng, (batch, time))
    logp = log_softmax_reference(logits)
    expected = -(np.exp(logp) * logp).sum(-1) * mask
    np.testing.assert_allclose(
        losses.entropy_from_logits(logits, mask), expected, rtol=1e-5, atol=1e-5
    )


def test_entropy_closed_forms():
    uniform = jnp.zeros((1, 2, 8))
    np.testing.assert_allclose(
        losses.entropy_from_logits(uniform, jnp.ones((1, 2))), np.log(8.0), rtol=1e-6
    )
    peaked = jnp.array([[[1e4, 0.0, 0.0]]])
    np.testing.assert_allclose(losses.entropy_from_logits(peaked, jnp.ones((1, 1))), 0.0)


def test_temperature_scales_logits():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 5)).astype(np.float32)
    tokens = rng.integers(0, 5, (2, 3))
    mask = np.ones((2, 3))
    scaled, _ = losses.sequence_logprobs(logits / 0.5, tokens, mask)
    tempered, _ = losses.sequence_logprobs(logits, tokens, mask, temperature=0.5)
    np.testing.assert_allclose(scaled, tempered, rtol=1e-6)


def test_bf16_logits_compute_in_float32():
    logits = jnp.ones((1, 2, 4), jnp.bfloat16)
    token_logp, _ = losses.sequence_logprobs(logits, jnp.zeros((1, 2), int), jnp.ones((1, 2)))
    assert token_logp.dtype == jnp.float32
    np.testing.assert_allclose(token_logp, np.log(0.25), rtol=1e-6)


@pytest.mark.parametrize("bad", POISONS)
def test_padding_invariance_of_logprobs_and_entropy(bad):
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(3, 5, 7)).astype(np.float32)
    tokens = rng.integers(0, 7, (3, 5))
    mask = random_mask(rng, (3, 5), right_padded=True)
    dirty_logits = poison(logits, mask[..., None], bad)
    dirty_tokens = np.where(mask == 1, tokens, 10**6)  # out-of-vocabulary pad ids

    def outputs(lg, tk):
        def total(x):
            token_logp, seq_logp = losses.sequence_logprobs(x, tk, mask)
            return seq_logp.sum() + losses.entropy_from_logits(x, mask).sum(), token_logp

        (value, token_logp), grad = jax.value_and_grad(total, has_aux=True)(lg)
        return value, token_logp, grad

    for clean, dirty in zip(
        outputs(logits, tokens), outputs(dirty_logits, dirty_tokens), strict=True
    ):
        np.testing.assert_array_equal(clean, dirty)


def test_logprobs_trace_once_per_shape():
    fn = jax.jit(chex.assert_max_traces(losses.sequence_logprobs, n=1))
    ent = jax.jit(chex.assert_max_traces(losses.entropy_from_logits, n=1))
    for seed in range(3):
        rng = np.random.default_rng(seed)
        logits = rng.normal(size=(2, 3, 4)).astype(np.float32)
        fn(logits, rng.integers(0, 4, (2, 3)).astype(np.int32), rng.random((2, 3)) < 0.5)
        ent(logits, rng.random((2, 3)) < 0.5)


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="mask_BxT"):
        losses.sequence_logprobs(jnp.zeros((2, 3, 4)), jnp.zeros((2, 3), int), jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="temperature"):
        losses.sequence_logprobs(
            jnp.zeros((2, 3, 4)), jnp.zeros((2, 3), int), jnp.ones((2, 3)), temperature=0.0
        )
    with pytest.raises(ValueError, match="rank 3"):
        losses.entropy_from_logits(jnp.zeros((2, 3)), jnp.ones((2,)))
