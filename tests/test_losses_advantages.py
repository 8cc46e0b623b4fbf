"""GAE, whitening and group baselines against float64 references and closed forms."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from loss_testing import POISONS, poison, random_mask, shapes_and_seeds

from rlhf_jax import losses


def gae_reference(rewards, values, mask, gamma, lam):
    """The defining sum A_t = Σ_l (γλ)^l δ_{t+l} over the valid run that starts at t."""
    rewards, values = rewards.astype(np.float64), values.astype(np.float64)
    batch, time = rewards.shape
    adv = np.zeros((batch, time))
    for b in range(batch):
        for t in range(time):
            if not mask[b, t]:
                continue
            total, weight, u = 0.0, 1.0, t
            while u < time and mask[b, u]:
                next_value = values[b, u + 1] if u + 1 < time and mask[b, u + 1] else 0.0
                total += weight * (rewards[b, u] + gamma * next_value - values[b, u])
                weight *= gamma * lam
                u += 1
            adv[b, t] = total
    return adv, (adv + values) * mask


@given(
    shapes_and_seeds,
    st.sampled_from([1.0, 0.99, 0.5]),
    st.sampled_from([0.95, 1.0, 0.0, 0.3]),
    st.booleans(),
)
def test_gae_matches_reference(shape_seed, gamma, lam, right_padded):
    seed, batch, time = shape_seed
    rng = np.random.default_rng(seed)
    rewards, values = rng.normal(size=(2, batch, time)).astype(np.float32)
    mask = random_mask(rng, (batch, time), right_padded=right_padded)
    adv, ret = losses.gae(rewards, values, mask, gamma=gamma, lam=lam)
    expected_adv, expected_ret = gae_reference(rewards, values, mask, gamma, lam)
    np.testing.assert_allclose(adv, expected_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, expected_ret, rtol=1e-5, atol=1e-5)


def test_gae_lambda_zero_is_td_residual():
    rewards = np.array([[1.0, 0.5, 2.0, 0.0]])
    values = np.array([[0.3, -0.2, 0.8, 9.0]])
    mask = np.array([[1, 1, 1, 0]])
    adv, _ = losses.gae(rewards, values, mask, gamma=0.9, lam=0.0)
    td = [1.0 + 0.9 * -0.2 - 0.3, 0.5 + 0.9 * 0.8 + 0.2, 2.0 + 0.0 - 0.8, 0.0]
    np.testing.assert_allclose(adv[0], td, rtol=1e-6)


def test_gae_gamma_lambda_one_is_reward_to_go_minus_value():
    rng = np.random.default_rng(0)
    rewards, values = rng.normal(size=(2, 3, 6)).astype(np.float32)
    mask = np.array([[1] * 6, [1, 1, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0]], np.float32)
    adv, ret = losses.gae(rewards, values, mask, gamma=1.0, lam=1.0)
    reward_to_go = np.cumsum((rewards * mask)[:, ::-1], axis=1)[:, ::-1] * mask
    np.testing.assert_allclose(adv, (reward_to_go - values) * mask, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ret, reward_to_go, rtol=1e-5, atol=1e-6)


def test_gae_does_not_bootstrap_past_the_last_token():
    # One reward on the last valid token, huge values in the padding: they must not leak.
    rewards = np.array([[0.0, 0.0, 1.0, 0.0, 0.0]])
    values = np.array([[0.0, 0.0, 0.0, 1e6, 1e6]])
    mask = np.array([[1, 1, 1, 0, 0]])
    adv, _ = losses.gae(rewards, values, mask, gamma=1.0, lam=0.95)
    np.testing.assert_allclose(adv[0], [0.95**2, 0.95, 1.0, 0.0, 0.0], rtol=1e-6)


@pytest.mark.parametrize("bad", POISONS)
def test_gae_padding_invariance(bad):
    rng = np.random.default_rng(5)
    rewards, values = rng.normal(size=(2, 4, 7)).astype(np.float32)
    mask = random_mask(rng, (4, 7), right_padded=True)

    def run(r, v):
        out, vjp = jax.vjp(lambda r, v: losses.gae(r, v, mask, gamma=0.99, lam=0.95), r, v)
        return (*out, *vjp((np.ones_like(r), np.ones_like(r))))

    clean = run(rewards, values)
    dirty = run(poison(rewards, mask, bad), poison(values, mask, bad))
    for c, d in zip(clean, dirty, strict=True):
        np.testing.assert_array_equal(c, d)


def whiten_reference(x, mask, shift_mean, unbiased):
    valid = x[mask == 1].astype(np.float64)
    mean = valid.mean()
    var = valid.var(ddof=1 if unbiased else 0) if valid.size > int(unbiased) else 0.0
    out = (x - mean) / np.sqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


@given(shapes_and_seeds, st.booleans(), st.booleans())
def test_whiten_matches_reference(shape_seed, shift_mean, unbiased):
    seed, batch, time = shape_seed
    rng = np.random.default_rng(seed)
    x = rng.normal(2.0, 3.0, (batch, time)).astype(np.float32)
    mask = random_mask(rng, (batch, time))
    mask.flat[0] = 1
    out = losses.whiten(x, mask, shift_mean=shift_mean, unbiased=unbiased)
    expected = whiten_reference(x, mask, shift_mean, unbiased)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_whiten_moments():
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 2.0, (8, 16)).astype(np.float32)
    mask = random_mask(rng, (8, 16))
    valid = mask == 1
    out = np.asarray(losses.whiten(x, mask))
    np.testing.assert_allclose(out[valid].mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(out[valid].std(), 1.0, rtol=1e-4)
    kept = np.asarray(losses.whiten(x, mask, shift_mean=False))
    np.testing.assert_allclose(kept[valid].mean(), x[valid].mean(), rtol=1e-5)
    assert np.all(out[~valid] == 0)


@pytest.mark.parametrize("bad", POISONS)
def test_whiten_padding_invariance(bad):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 5)).astype(np.float32)
    mask = random_mask(rng, (3, 5))

    def run(v):
        return jax.value_and_grad(lambda v: jnp.sum(losses.whiten(v, mask) ** 3))(v)

    for c, d in zip(run(x), run(poison(x, mask, bad)), strict=True):
        np.testing.assert_array_equal(c, d)


def group_reference(scores, baseline, normalize_std, eps):
    scores = scores.astype(np.float64)
    batch, k = scores.shape
    adv = np.zeros_like(scores)
    for b in range(batch):
        for i in range(k):
            if baseline == "mean":
                adv[b, i] = scores[b, i] - scores[b].mean()
            else:
                adv[b, i] = scores[b, i] - np.mean(np.delete(scores[b], i))
        if normalize_std:
            adv[b] /= scores[b].std(ddof=1) + eps
    return adv


@given(
    st.integers(0, 2**31 - 1),
    st.integers(1, 4),
    st.integers(2, 6),
    st.sampled_from(["mean", "rloo"]),
    st.booleans(),
)
def test_group_advantages_match_reference(seed, batch, k, baseline, normalize_std):
    rng = np.random.default_rng(seed)
    scores = rng.normal(0, 2, (batch, k)).astype(np.float32)
    adv = losses.group_advantages(scores, baseline=baseline, normalize_std=normalize_std)
    expected = group_reference(scores, baseline, normalize_std, 1e-4)
    np.testing.assert_allclose(adv, expected, rtol=1e-5, atol=1e-5)


def test_group_advantages_closed_forms():
    scores = jnp.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    adv = losses.group_advantages(scores, baseline="rloo", normalize_std=False)
    np.testing.assert_allclose(adv, [[-1.5, 0.0, 1.5], [0.0, 0.0, 0.0]], atol=1e-6)
    grpo = losses.group_advantages(scores, baseline="mean")
    np.testing.assert_allclose(grpo[0], np.array([-1.0, 0.0, 1.0]) / (1.0 + 1e-4), rtol=1e-6)
    assert np.all(grpo[1] == 0)  # a group that agrees teaches nothing
    with pytest.raises(ValueError, match="K >= 2"):
        losses.group_advantages(jnp.ones((2, 1)))
    with pytest.raises(ValueError, match="baseline"):
        losses.group_advantages(jnp.ones((2, 2)), baseline="median")


def test_batch_level_scaling_divides_by_the_batch_std():
    rng = np.random.default_rng(3)
    scores = rng.normal(0, 2, (4, 3)).astype(np.float32)
    adv = losses.group_advantages(scores, std_over="batch")
    s = scores.astype(np.float64)
    want = (s - s.mean(1, keepdims=True)) / (s.std(ddof=1) + 1e-4)
    np.testing.assert_allclose(adv, want, rtol=1e-5, atol=1e-6)
    # A group that barely varies keeps small advantages (per-group scaling would blow them up).
    flat = jnp.array([[1.0, 1.001], [0.0, 4.0]])
    assert float(jnp.max(jnp.abs(losses.group_advantages(flat, std_over="batch")[0]))) < 0.01
    assert float(jnp.max(jnp.abs(losses.group_advantages(flat)[0]))) > 0.5
    with pytest.raises(ValueError, match="std_over"):
        losses.group_advantages(flat, std_over="row")


def test_advantages_trace_once_per_shape():
    gae = jax.jit(
        chex.assert_max_traces(lambda r, v, m: losses.gae(r, v, m, gamma=1, lam=0.95), n=1)
    )
    whiten = jax.jit(chex.assert_max_traces(losses.whiten, n=1))
    group = jax.jit(chex.assert_max_traces(losses.group_advantages, n=1))
    for seed in range(3):
        rng = np.random.default_rng(seed)
        r, v = rng.normal(size=(2, 3, 4)).astype(np.float32)
        m = rng.random((3, 4)) < 0.6
        gae(r, v, m)
        whiten(r, m)
        group(r)
