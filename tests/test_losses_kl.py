"""KL estimators, KL-shaped rewards and the adaptive KL controller."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from loss_testing import POISONS, poison, random_mask, shapes_and_seeds

from rlhf_jax import losses


def kl_reference(logp, ref_logp, estimator):
    logp, ref_logp = logp.astype(np.float64), ref_logp.astype(np.float64)
    ratio = np.exp(ref_logp) / np.exp(logp)  # π_ref / π, from probabilities
    if estimator == "k1":
        return -np.log(ratio)
    if estimator == "k2":
        return 0.5 * np.log(ratio) ** 2
    if estimator == "k3":
        return ratio - 1 - np.log(ratio)
    return np.abs(np.log(ratio))


@given(shapes_and_seeds, st.sampled_from(losses.KL_ESTIMATORS), st.booleans())
def test_kl_penalty_matches_reference(shape_seed, estimator, with_mask):
    seed, batch, time = shape_seed
    rng = np.random.default_rng(seed)
    logp = -rng.exponential(2.0, (batch, time)).astype(np.float32)
    ref_logp = -rng.exponential(2.0, (batch, time)).astype(np.float32)
    mask = random_mask(rng, (batch, time)) if with_mask else np.ones((batch, time))
    out = losses.kl_penalty(
        logp, ref_logp, estimator=estimator, mask_BxT=mask if with_mask else None
    )
    expected = kl_reference(logp, ref_logp, estimator) * mask
    np.testing.assert_allclose(out, expected, rtol=2e-5, atol=1e-5)


def test_kl_estimators_are_unbiased_where_claimed():
    # Sample from π = N-ary categorical, compare E_π[k] with the exact KL(π ‖ π_ref).
    rng = np.random.default_rng(0)
    p = np.array([0.5, 0.3, 0.15, 0.05])
    q = np.array([0.25, 0.25, 0.25, 0.25])
    exact = np.sum(p * np.log(p / q))
    samples = rng.choice(4, size=200_000, p=p)
    logp, ref_logp = np.log(p)[samples][None], np.log(q)[samples][None]
    for estimator in ("k1", "k3"):
        estimate = float(jnp.mean(losses.kl_penalty(logp, ref_logp, estimator=estimator)))
        np.testing.assert_allclose(estimate, exact, rtol=0.02)
    assert float(jnp.min(losses.kl_penalty(logp, ref_logp, estimator="k3"))) >= 0


def test_kl_is_zero_when_policies_agree():
    logp = jnp.array([[-1.0, -2.0, -0.1]])
    for estimator in losses.KL_ESTIMATORS:
        np.testing.assert_array_equal(losses.kl_penalty(logp, logp, estimator=estimator), 0)


def test_kl_penalty_rejects_unknown_estimator():
    with pytest.raises(ValueError, match="estimator"):
        losses.kl_penalty(jnp.zeros((1, 2)), jnp.zeros((1, 2)), estimator="k4")


@given(shapes_and_seeds, st.sampled_from(losses.KL_ESTIMATORS))
def test_kl_shaped_rewards_match_reference(shape_seed, estimator):
    seed, batch, time = shape_seed
    rng = np.random.default_rng(seed)
    logp, ref_logp = -rng.exponential(1.0, (2, batch, time)).astype(np.float32)
    scores = rng.normal(size=batch).astype(np.float32)
    mask = random_mask(rng, (batch, time), right_padded=True)
    rewards, kl = losses.kl_shaped_rewards(
        scores, logp, ref_logp, mask, kl_coef=0.05, estimator=estimator
    )
    expected_kl = kl_reference(logp, ref_logp, estimator) * mask
    expected = -0.05 * expected_kl
    for b in range(batch):
        valid = np.flatnonzero(mask[b])
        if valid.size:
            expected[b, valid[-1]] += scores[b]
    np.testing.assert_allclose(kl, expected_kl, rtol=2e-5, atol=1e-5)
    np.testing.assert_allclose(rewards, expected, rtol=2e-5, atol=1e-5)


def test_score_lands_on_last_valid_token_never_on_padding():
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    zeros = np.zeros((3, 5), np.float32)
    rewards, _ = losses.kl_shaped_rewards(
        np.array([2.0, 3.0, 4.0]), zeros, zeros, mask, kl_coef=0.1
    )
    np.testing.assert_array_equal(rewards, [[0, 0, 2.0, 0, 0], [0, 0, 0, 0, 3.0], [0, 0, 0, 0, 0]])


@pytest.mark.parametrize("bad", POISONS)
def test_kl_shaped_rewards_padding_invariance(bad):
    rng = np.random.default_rng(7)
    logp, ref_logp = -rng.exponential(1.0, (2, 3, 6)).astype(np.float32)
    scores = rng.normal(size=3).astype(np.float32)
    mask = random_mask(rng, (3, 6), right_padded=True)

    def run(lp, rlp):
        def total(lp, rlp):
            rewards, kl = losses.kl_shaped_rewards(
                scores, lp, rlp, mask, kl_coef=0.1, estimator="k3"
            )
            return jnp.sum(rewards) + jnp.sum(kl), rewards

        (value, rewards), grads = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(lp, rlp)
        return value, rewards, *grads

    clean = run(logp, ref_logp)
    dirty = run(poison(logp, mask, bad), poison(ref_logp, mask, bad))
    for c, d in zip(clean, dirty, strict=True):
        np.testing.assert_array_equal(c, d)


def test_adaptive_kl_moves_coefficient_the_right_way():
    state = losses.adaptive_kl_init(init_coef=0.1, target=6.0, horizon=10000)
    up = losses.adaptive_kl_update(state, kl=12.0, n_steps=256)
    down = losses.adaptive_kl_update(state, kl=1.0, n_steps=256)
    on_target = losses.adaptive_kl_update(state, kl=6.0, n_steps=256)
    assert float(up.coef) > 0.1 > float(down.coef)
    np.testing.assert_allclose(on_target.coef, 0.1, rtol=1e-7)
    # Ziegler et al.: the proportional error is clipped to ±0.2.
    np.testing.assert_allclose(up.coef, 0.1 * (1 + 0.2 * 256 / 10000), rtol=1e-6)
    np.testing.assert_allclose(down.coef, 0.1 * (1 - 0.2 * 256 / 10000), rtol=1e-6)
    mild = losses.adaptive_kl_update(state, kl=6.6, n_steps=100)
    np.testing.assert_allclose(mild.coef, 0.1 * (1 + 0.1 * 100 / 10000), rtol=1e-6)


def test_fixed_kl_controller_never_moves():
    state = losses.adaptive_kl_init(init_coef=0.05, target=None)
    after = losses.adaptive_kl_update(state, kl=100.0, n_steps=10**6)
    assert float(after.coef) == pytest.approx(0.05)


def test_adaptive_kl_update_is_jittable_and_pure():
    state = losses.adaptive_kl_init(init_coef=0.2, target=6.0, horizon=100)
    update = jax.jit(chex.assert_max_traces(losses.adaptive_kl_update, n=1))
    for kl in (10.0, 3.0, 6.5):
        state = update(state, jnp.float32(kl), jnp.int32(8))
    expected = 0.2
    for kl in (10.0, 3.0, 6.5):
        expected *= 1 + np.clip(kl / 6 - 1, -0.2, 0.2) * 8 / 100
    np.testing.assert_allclose(state.coef, expected, rtol=1e-6)


def test_adaptive_kl_init_validates():
    with pytest.raises(ValueError, match="target"):
        losses.adaptive_kl_init(init_coef=0.1, target=-1.0)
    with pytest.raises(ValueError, match="horizon"):
        losses.adaptive_kl_init(init_coef=0.1, target=6.0, horizon=0)


def test_kl_functions_trace_once_per_shape():
    shaped = jax.jit(
        chex.assert_max_traces(
            lambda s, lp, rlp, m, c: losses.kl_shaped_rewards(s, lp, rlp, m, kl_coef=c), n=1
        )
    )
    for seed in range(3):
        rng = np.random.default_rng(seed)
        lp, rlp = rng.normal(size=(2, 2, 5)).astype(np.float32)
        shaped(
            rng.normal(size=2).astype(np.float32),
            lp,
            rlp,
            rng.random((2, 5)) < 0.5,
            jnp.float32(0.1 * seed),
        )
