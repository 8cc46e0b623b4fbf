"""GSPO, CISPO and truncated importance weights against float64 references and closed forms."""

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
from test_losses_ppo import aggregate_reference

from rlhf_jax import losses


def _inputs(seed, batch, time):
    rng = np.random.default_rng(seed)
    old = -rng.exponential(1.0, (batch, time)).astype(np.float32)
    logp = (old + rng.normal(0, 0.3, (batch, time))).astype(np.float32)
    adv = rng.normal(0, 1, (batch, time)).astype(np.float32)
    return logp, old, adv, random_mask(rng, (batch, time))


def gspo_reference(logp, old, adv, mask, low, high):
    """Sequence level: one ratio and one advantage per sequence; mean over valid sequences."""
    logp, old, adv, mask = (np.asarray(x, np.float64) for x in (logp, old, adv, mask))
    rows = []
    for b in range(logp.shape[0]):
        m = mask[b] > 0
        if not m.any():
            continue
        s = np.exp(np.mean(logp[b][m] - old[b][m]))
        a = np.mean(adv[b][m])
        rows.append(max(-a * s, -a * np.clip(s, low, high)))
    return np.mean(rows) if rows else 0.0


@given(shapes_and_seeds, st.sampled_from([(3e-4, 4e-4), (0.2, 0.2), (0.05, 0.3)]))
def test_gspo_sequence_level_matches_reference(shape_seed, clip):
    logp, old, adv, mask = _inputs(*shape_seed)
    loss, metrics = losses.gspo_policy_loss(
        logp, old, adv, mask, clip_eps=clip[0], clip_eps_high=clip[1]
    )
    want = gspo_reference(logp, old, adv, mask, 1 - clip[0], 1 + clip[1])
    np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-6)
    assert float(metrics["loss_denominator"]) == float((mask.sum(-1) > 0).sum())


@given(shapes_and_seeds, st.sampled_from(losses.AGGREGATIONS))
def test_gspo_token_value_is_the_sequence_ratios(shape_seed, aggregation):
    logp, old, adv, mask = _inputs(*shape_seed)
    loss, _ = losses.gspo_policy_loss(
        logp, old, adv, mask, clip_eps=0.2, clip_eps_high=0.2, token_level=True,
        aggregation=aggregation,
        norm_constant=float(logp.shape[1]),
    )  # fmt: skip
    # Every token of sequence i carries the ratio s_i.
    m = mask.astype(bool)
    lr = np.where(m, logp.astype(np.float64) - old, 0.0)
    s = np.exp(lr.sum(-1) / np.maximum(m.sum(-1), 1))[:, None]
    a = adv.astype(np.float64)
    per_token = np.maximum(-a * s, -a * np.clip(s, 0.8, 1.2))
    want = aggregate_reference(per_token, mask, aggregation, float(logp.shape[1]))
    np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-6)


def test_gspo_token_gradient_equals_gspo_for_constant_advantages():
    # With one advantage per sequence and the per-sequence token mean, GSPO-token's gradient is
    # GSPO's: both are −A_i s_i (1/|y_i|) Σ_t ∇ log π(y_t) inside the clip range.
    logp, old, _, mask = _inputs(5, 3, 6)
    mask[:, 0] = 1
    adv = np.repeat(np.array([[0.7], [-1.3], [0.4]], np.float32), 6, axis=1)
    wide = {"clip_eps": 10.0, "clip_eps_high": 10.0}
    seq = jax.grad(lambda lp: losses.gspo_policy_loss(lp, old, adv, mask, **wide)[0])
    tok = jax.grad(
        lambda lp: losses.gspo_policy_loss(lp, old, adv, mask, token_level=True, **wide)[0]
    )
    np.testing.assert_allclose(tok(logp), seq(logp), rtol=1e-5, atol=1e-7)


def test_gspo_gradients_match_finite_differences():
    rng = np.random.default_rng(1)
    old = -rng.exponential(size=(2, 4))
    logp = old + np.array([[0.05, 0.02, -0.04, 0.01], [-0.03, 0.04, 0.01, -0.02]])
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], np.float64)
    wide = {"clip_eps": 0.2, "clip_eps_high": 0.2}
    grads_match_finite_differences(
        lambda lp, a: losses.gspo_policy_loss(lp, old, a, mask, **wide)[0],
        [logp, rng.normal(size=(2, 4))],
        argnums=(0, 1),
    )
    # GSPO-token's gradient is a surrogate (s_i ∇ log π(y_t), by its stop-gradients); with one
    # advantage per sequence and the per-sequence token mean it is its value's gradient.
    adv = np.repeat(rng.normal(size=(2, 1)), 4, axis=1)
    grads_match_finite_differences(
        lambda lp: losses.gspo_policy_loss(lp, old, adv, mask, token_level=True, **wide)[0],
        [logp],
        argnums=(0,),
    )


@given(shapes_and_seeds, st.sampled_from(losses.AGGREGATIONS))
def test_cispo_matches_reference(shape_seed, aggregation):
    logp, old, adv, mask = _inputs(*shape_seed)
    loss, metrics = losses.cispo_policy_loss(
        logp, old, adv, mask, clip_eps=0.2, clip_eps_high=0.28, aggregation=aggregation,
        norm_constant=float(logp.shape[1]),
    )  # fmt: skip
    ratio = np.exp(logp.astype(np.float64) - old)
    per_token = -np.clip(ratio, 0.8, 1.28) * adv * logp.astype(np.float64)
    want = aggregate_reference(per_token, mask, aggregation, float(logp.shape[1]))
    np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-6)
    clipped = ((ratio < 0.8) | (ratio > 1.28)) & mask.astype(bool)
    np.testing.assert_allclose(metrics["clipfrac"], clipped.sum() / max(mask.sum(), 1), atol=1e-6)


def test_cispo_keeps_the_gradient_of_clipped_tokens():
    # Ratio 2 with A > 0: PPO's surrogate is flat there; CISPO still pushes log π up, weighted
    # by the clipped ratio 1 + ε_high.
    old, logp = jnp.zeros((1, 1)), jnp.log(jnp.full((1, 1), 2.0))
    one = jnp.ones((1, 1))
    grad = jax.grad(lambda lp: losses.cispo_policy_loss(lp, old, one, one, clip_eps_high=0.28)[0])
    np.testing.assert_allclose(grad(logp), [[-1.28]], rtol=1e-6)
    ppo = jax.grad(lambda lp: losses.ppo_policy_loss(lp, old, one, one)[0])
    assert float(ppo(logp)[0, 0]) == 0.0


def test_token_weights_scale_the_per_token_loss_and_carry_no_gradient():
    logp, old, adv, mask = _inputs(2, 3, 5)
    w = np.random.default_rng(0).uniform(0.5, 1.5, logp.shape).astype(np.float32)
    for fn, kw in (
        (losses.ppo_policy_loss, {}),
        (losses.cispo_policy_loss, {}),
        (losses.gspo_policy_loss, {"token_level": True, "clip_eps": 0.2, "clip_eps_high": 0.2}),
    ):
        # Weights 1 change nothing, and the weights get no gradient.
        plain, _ = fn(logp, old, adv, mask, aggregation="token_mean", **kw)
        ones, _ = fn(
            logp, old, adv, mask, aggregation="token_mean", token_weights_BxT=w * 0 + 1, **kw
        )
        np.testing.assert_allclose(ones, plain, rtol=1e-6)

        def weighted(ww, fn=fn, kw=kw):
            return fn(logp, old, adv, mask, aggregation="token_mean", token_weights_BxT=ww, **kw)[0]

        assert float(np.max(np.abs(jax.grad(weighted)(w)))) == 0.0
    # PPO: the weights multiply each token's clipped-surrogate term.
    ratio = np.exp(logp.astype(np.float64) - old)
    a = adv.astype(np.float64)
    per_token = np.maximum(-a * ratio, -a * np.clip(ratio, 0.8, 1.2))
    want = aggregate_reference(w * per_token, mask, "token_mean")
    got, _ = losses.ppo_policy_loss(logp, old, adv, mask, token_weights_BxT=w)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="token_weights"):
        losses.gspo_policy_loss(logp, old, adv, mask, token_weights_BxT=w)


def test_truncated_importance_weights_closed_form():
    old = jnp.log(jnp.array([[0.5, 0.2, 0.9]]))
    sample = jnp.log(jnp.array([[0.25, 0.4, 0.9]]))
    w = losses.truncated_importance_weights(old, sample, jnp.array([[1, 1, 0]]), cap=1.5)
    np.testing.assert_allclose(w, [[1.5, 0.5, 0.0]], rtol=1e-6)  # 2 capped at 1.5; pad 0
    with pytest.raises(ValueError, match="cap"):
        losses.truncated_importance_weights(old, sample, jnp.ones((1, 3)), cap=0.0)


@pytest.mark.parametrize("bad", POISONS)
def test_variants_padding_invariance(bad):
    logp, old, adv, mask = _inputs(8, 3, 5)
    mask[:, 0] = 1

    def run(lp, olp, a):
        out = []
        for fn, kw in (
            (losses.gspo_policy_loss, {}),
            (losses.gspo_policy_loss, {"token_level": True}),
            (losses.cispo_policy_loss, {}),
        ):
            (loss, metrics), grads = jax.value_and_grad(
                lambda x, y, z, f=fn, k=kw: f(x, y, z, mask, **k), argnums=(0, 1, 2),
                has_aux=True,
            )(lp, olp, a)  # fmt: skip
            out += [loss, *grads, *metrics.values()]
        return out

    clean = run(logp, old, adv)
    dirty = run(*(poison(x, mask, bad) for x in (logp, old, adv)))
    for c, d in zip(clean, dirty, strict=True):
        np.testing.assert_array_equal(c, d)


def test_variants_trace_once_per_shape():
    gspo = jax.jit(chex.assert_max_traces(losses.gspo_policy_loss, n=1))
    cispo = jax.jit(chex.assert_max_traces(losses.cispo_policy_loss, n=1))
    for seed in range(3):
        logp, old, adv, mask = _inputs(seed, 2, 5)
        gspo(logp, old, adv, mask)
        cispo(logp, old, adv, mask)
