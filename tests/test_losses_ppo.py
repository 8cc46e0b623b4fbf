"""PPO policy and value losses, and the token-loss aggregation modes."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from loss_testing import (
    POISONS,
    grads_match_finite_differences,
    poison,
    random_mask,
    shapes_and_seeds,
)

from rlhf_jax import losses


def aggregate_reference(loss, mask, mode, constant=None):
    loss, mask = loss.astype(np.float64), mask.astype(bool)
    if mode == "token_mean":
        return loss[mask].sum() / max(mask.sum(), 1)
    rows = [(loss[b][mask[b]].sum(), mask[b].sum()) for b in range(loss.shape[0]) if mask[b].any()]
    if not rows:
        return 0.0
    if mode == "seq_mean_token_mean":
        return np.mean([s / n for s, n in rows])
    if mode == "seq_mean_token_sum":
        return np.mean([s for s, _ in rows])
    return np.mean([s / constant for s, _ in rows])


def ppo_reference(logp, old_logp, adv, eps_low, eps_high, dual_clip):
    ratio = np.exp(logp.astype(np.float64) - old_logp.astype(np.float64))
    adv = adv.astype(np.float64)
    loss = np.maximum(-adv * ratio, -adv * np.clip(ratio, 1 - eps_low, 1 + eps_high))
    if dual_clip is not None:
        loss = np.where(adv < 0, np.minimum(loss, -adv * dual_clip), loss)
    clipped = (-adv * np.clip(ratio, 1 - eps_low, 1 + eps_high)) > (-adv * ratio)
    return loss, ratio, clipped


@given(
    shapes_and_seeds,
    st.sampled_from(losses.AGGREGATIONS),
    st.sampled_from([(0.2, None), (0.2, 0.28), (0.1, 0.3)]),
    st.sampled_from([None, 3.0]),
)
def test_ppo_policy_loss_matches_reference(shape_seed, aggregation, clip, dual_clip):
    seed, batch, time = shape_seed
    rng = np.random.default_rng(seed)
    old_logp = -rng.exponential(1.0, (batch, time)).astype(np.float32)
    logp = (old_logp + rng.normal(0, 0.5, (batch, time))).astype(np.float32)
    adv = rng.normal(0, 1, (batch, time)).astype(np.float32)
    mask = random_mask(rng, (batch, time))
    eps_low, eps_high = clip
    loss, metrics = losses.ppo_policy_loss(
        logp,
        old_logp,
        adv,
        mask,
        clip_eps=eps_low,
        clip_eps_high=eps_high,
        dual_clip=dual_clip,
        aggregation=aggregation,
        norm_constant=float(time),
    )
    token_loss, ratio, clipped = ppo_reference(
        logp, old_logp, adv, eps_low, eps_high or eps_low, dual_clip
    )
    expected = aggregate_reference(token_loss, mask, aggregation, float(time))
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)
    valid = mask == 1
    if valid.any():
        log_ratio = np.log(ratio[valid])
        np.testing.assert_allclose(metrics["clipfrac"], clipped[valid].mean(), rtol=1e-6)
        np.testing.assert_allclose(
            metrics["approx_kl"], np.mean(ratio[valid] - 1 - log_ratio), rtol=1e-4, atol=1e-6
        )
        np.testing.assert_allclose(metrics["ratio_mean"], ratio[valid].mean(), rtol=1e-5)
        np.testing.assert_allclose(metrics["ratio_max"], ratio[valid].max(), rtol=1e-5)


def test_ppo_ratio_one_is_minus_mean_advantage():
    rng = np.random.default_rng(0)
    logp = -rng.exponential(size=(3, 5)).astype(np.float32)
    adv = rng.normal(size=(3, 5)).astype(np.float32)
    mask = random_mask(rng, (3, 5))
    loss, metrics = losses.ppo_policy_loss(logp, logp, adv, mask, clip_eps=0.2)
    np.testing.assert_allclose(loss, -adv[mask == 1].mean(), rtol=1e-6)
    assert float(metrics["clipfrac"]) == 0.0
    assert float(metrics["approx_kl"]) == 0.0
    assert float(metrics["ratio_mean"]) == 1.0


def test_ppo_clipping_cuts_the_gradient():
    # Ratio 1.5 with A > 0: beyond 1 + ε the objective is flat.
    old = jnp.zeros((1, 1))
    logp = jnp.log(jnp.full((1, 1), 1.5))
    grad = jax.grad(
        lambda lp: losses.ppo_policy_loss(lp, old, jnp.ones((1, 1)), jnp.ones((1, 1)))[0]
    )(logp)
    assert float(grad[0, 0]) == 0.0
    _, metrics = losses.ppo_policy_loss(logp, old, jnp.ones((1, 1)), jnp.ones((1, 1)))
    assert float(metrics["clipfrac"]) == 1.0


def test_dual_clip_bounds_negative_advantage_loss():
    logp = jnp.log(jnp.array([[10.0, 10.0]]))
    adv = jnp.array([[-1.0, 1.0]])
    loss, metrics = losses.ppo_policy_loss(
        logp, jnp.zeros((1, 2)), adv, jnp.ones((1, 2)), dual_clip=3.0
    )
    # Token 0: max(10, 1.2) = 10 → bounded at 3. Token 1: max(−10, −1.2) = −1.2.
    np.testing.assert_allclose(loss, (3.0 - 1.2) / 2, rtol=1e-6)
    np.testing.assert_allclose(metrics["dual_clipfrac"], 0.5)
    with pytest.raises(ValueError, match="dual_clip"):
        losses.ppo_policy_loss(logp, logp, adv, jnp.ones((1, 2)), dual_clip=0.5)


def value_reference(values, old_values, returns, clip_eps):
    values, old_values, returns = (x.astype(np.float64) for x in (values, old_values, returns))
    unclipped = (values - returns) ** 2
    if clip_eps is None:
        return 0.5 * unclipped, np.zeros_like(unclipped, bool)
    clipped = (old_values + np.clip(values - old_values, -clip_eps, clip_eps) - returns) ** 2
    return 0.5 * np.maximum(unclipped, clipped), clipped > unclipped


@given(shapes_and_seeds, st.sampled_from(losses.AGGREGATIONS), st.sampled_from([None, 0.2]))
def test_value_loss_matches_reference(shape_seed, aggregation, clip_eps):
    seed, batch, time = shape_seed
    rng = np.random.default_rng(seed)
    values, old_values, returns = rng.normal(size=(3, batch, time)).astype(np.float32)
    mask = random_mask(rng, (batch, time))
    loss, metrics = losses.value_loss(
        values,
        old_values,
        returns,
        mask,
        clip_eps=clip_eps,
        aggregation=aggregation,
        norm_constant=4.0,
    )
    token_loss, clipped = value_reference(values, old_values, returns, clip_eps)
    np.testing.assert_allclose(
        loss, aggregate_reference(token_loss, mask, aggregation, 4.0), rtol=1e-5, atol=1e-6
    )
    valid = mask == 1
    if valid.any():
        np.testing.assert_allclose(metrics["clipfrac"], clipped[valid].mean(), rtol=1e-6)
        target_var = returns[valid].astype(np.float64).var()
        if target_var > 1e-6:
            ev = 1 - (returns[valid] - values[valid]).astype(np.float64).var() / target_var
            np.testing.assert_allclose(metrics["explained_variance"], ev, rtol=1e-4, atol=1e-5)


def test_explained_variance_closed_forms():
    returns = jnp.array([[1.0, 2.0, 3.0, 4.0]])
    mask = jnp.ones((1, 4))
    np.testing.assert_allclose(losses.explained_variance(returns, returns, mask), 1.0)
    mean_pred = jnp.full((1, 4), 2.5)
    np.testing.assert_allclose(losses.explained_variance(mean_pred, returns, mask), 0.0)
    constant = jnp.ones((1, 4))
    assert float(losses.explained_variance(returns, constant, mask)) == 0.0


def test_aggregation_modes_differ_as_documented():
    loss = jnp.array([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0]])
    mask = jnp.array([[1, 1, 1, 1], [1, 0, 0, 0]])
    expected = {
        "token_mean": 8.0 / 5,
        "seq_mean_token_mean": (1.0 + 4.0) / 2,
        "seq_mean_token_sum": (4.0 + 4.0) / 2,
        "seq_mean_token_sum_norm": (4.0 / 8 + 4.0 / 8) / 2,
    }
    for mode, value in expected.items():
        out, _, _ = losses.aggregate(loss, mask, mode=mode, norm_constant=8.0)
        np.testing.assert_allclose(out, value, rtol=1e-6, err_msg=mode)
    with pytest.raises(ValueError, match="norm_constant"):
        losses.aggregate(loss, mask, mode="seq_mean_token_sum_norm")
    with pytest.raises(ValueError, match="aggregation"):
        losses.aggregate(loss, mask, mode="sum")


@pytest.mark.parametrize("aggregation", losses.AGGREGATIONS)
def test_normalizer_makes_gradient_accumulation_exact(aggregation):
    rng = np.random.default_rng(4)
    old = -rng.exponential(size=(4, 6)).astype(np.float32)
    logp = (old + rng.normal(0, 0.3, (4, 6))).astype(np.float32)
    adv = rng.normal(size=(4, 6)).astype(np.float32)
    mask = random_mask(rng, (4, 6), right_padded=True)
    mask[:, 0] = 1

    def loss_fn(lp, rows, normalizer=None):
        return losses.ppo_policy_loss(
            lp,
            old[rows],
            adv[rows],
            mask[rows],
            aggregation=aggregation,
            norm_constant=6.0,
            normalizer=normalizer,
        )

    full_loss, full_metrics = loss_fn(logp, slice(None))
    full_grad = jax.grad(lambda lp: loss_fn(lp, slice(None))[0])(logp)
    count = full_metrics["loss_denominator"]
    halves = (slice(0, 2), slice(2, 4))
    micro_loss = sum(loss_fn(logp[h], h, count)[0] for h in halves)
    micro_grad = np.concatenate(
        [jax.grad(lambda lp, h=h: loss_fn(lp, h, count)[0])(logp[h]) for h in halves]
    )
    np.testing.assert_allclose(micro_loss, full_loss, rtol=1e-6)
    np.testing.assert_allclose(micro_grad, full_grad, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("bad", POISONS)
@pytest.mark.parametrize("aggregation", losses.AGGREGATIONS)
def test_ppo_losses_padding_invariance(bad, aggregation):
    rng = np.random.default_rng(8)
    old_logp = -rng.exponential(1.0, (3, 5)).astype(np.float32)
    logp = (old_logp + rng.normal(0, 0.4, (3, 5))).astype(np.float32)
    adv, values, old_values, returns = rng.normal(size=(4, 3, 5)).astype(np.float32)
    mask = random_mask(rng, (3, 5), right_padded=True)

    def run(*args):
        def policy(lp, olp, a):
            return losses.ppo_policy_loss(
                lp, olp, a, mask, dual_clip=3.0, aggregation=aggregation, norm_constant=5.0
            )

        def value(v, ov, r):
            return losses.value_loss(
                v, ov, r, mask, clip_eps=0.2, aggregation=aggregation, norm_constant=5.0
            )

        (pl, pm), pg = jax.value_and_grad(policy, argnums=(0, 1, 2), has_aux=True)(*args[:3])
        (vl, vm), vg = jax.value_and_grad(value, argnums=(0, 1, 2), has_aux=True)(*args[3:])
        return [pl, *pg, vl, *vg, *pm.values(), *vm.values()]

    clean = run(logp, old_logp, adv, values, old_values, returns)
    dirty = run(*(poison(x, mask, bad) for x in (logp, old_logp, adv, values, old_values, returns)))
    for c, d in zip(clean, dirty, strict=True):
        np.testing.assert_array_equal(c, d)


@pytest.mark.parametrize("aggregation", losses.AGGREGATIONS)
def test_ppo_gradients_match_finite_differences(aggregation):
    rng = np.random.default_rng(1)
    old = -rng.exponential(size=(2, 4))
    # Ratios inside and outside the clip range, away from its kinks.
    logp = old + np.array([[0.05, 0.5, -0.5, 0.01], [-0.03, 0.4, 0.1, -0.4]])
    adv = rng.normal(size=(2, 4))
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], np.float64)
    grads_match_finite_differences(
        lambda lp, a: losses.ppo_policy_loss(
            lp, old, a, mask, aggregation=aggregation, norm_constant=4.0
        )[0],
        [logp, adv],
        argnums=(0, 1),
    )


@pytest.mark.parametrize("clip_eps", [None, 0.2])
def test_value_loss_gradients_match_finite_differences(clip_eps):
    rng = np.random.default_rng(2)
    old_values, returns = rng.normal(size=(2, 2, 4))
    values = old_values + np.array([[0.05, 0.5, -0.5, 0.1], [-0.03, 0.4, 0.1, -0.4]])
    mask = np.array([[1, 1, 0, 1], [1, 1, 1, 1]], np.float64)
    grads_match_finite_differences(
        lambda v, r: losses.value_loss(v, old_values, r, mask, clip_eps=clip_eps)[0],
        [values, returns],
        argnums=(0, 1),
    )


def test_ppo_losses_trace_once_per_shape():
    policy = jax.jit(chex.assert_max_traces(losses.ppo_policy_loss, n=1))
    value = jax.jit(chex.assert_max_traces(losses.value_loss, n=1))
    for seed in range(3):
        rng = np.random.default_rng(seed)
        a, b, c = rng.normal(size=(3, 2, 5)).astype(np.float32)
        m = rng.random((2, 5)) < 0.7
        policy(a, b, c, m)
        value(a, b, c, m)
