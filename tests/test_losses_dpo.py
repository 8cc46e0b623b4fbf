"""DPO (sigmoid / robust / hinge / IPO), SimPO and ORPO against float64 references."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from loss_testing import POISONS, grads_match_finite_differences

from rlhf_jax import losses


def log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def dpo_reference(pc, pr, rc, rr, beta, loss_type, eps):
    pc, pr, rc, rr = (x.astype(np.float64) for x in (pc, pr, rc, rr))
    h = (pc - rc) - (pr - rr)
    if loss_type == "sigmoid":
        loss = -(1 - eps) * log_sigmoid(beta * h) - eps * log_sigmoid(-beta * h)
    elif loss_type == "robust":
        loss = (-(1 - eps) * log_sigmoid(beta * h) + eps * log_sigmoid(-beta * h)) / (1 - 2 * eps)
    elif loss_type == "hinge":
        loss = np.maximum(0.0, 1 - beta * h)
    else:
        loss = (h - 1 / (2 * beta)) ** 2
    return loss.mean(), beta * (pc - rc), beta * (pr - rr)


def _random_logps(rng, batch):
    return [(-rng.exponential(20.0, batch)).astype(np.float32) for _ in range(4)]


@given(
    st.integers(0, 2**31 - 1),
    st.integers(1, 10),
    st.sampled_from(losses.DPO_LOSS_TYPES),
    st.sampled_from([0.1, 0.5]),
    st.sampled_from([0.0, 0.1]),
)
def test_dpo_loss_matches_reference(seed, batch, loss_type, beta, eps):
    if loss_type in ("hinge", "ipo"):
        eps = 0.0
    rng = np.random.default_rng(seed)
    pc, pr, rc, rr = _random_logps(rng, batch)
    loss, metrics = losses.dpo_loss(
        pc, pr, rc, rr, beta=beta, loss_type=loss_type, label_smoothing=eps
    )
    expected, chosen, rejected = dpo_reference(pc, pr, rc, rr, beta, loss_type, eps)
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(metrics["rewards/chosen"], chosen.mean(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(metrics["rewards/rejected"], rejected.mean(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(metrics["rewards/accuracies"], np.mean(chosen > rejected))
    np.testing.assert_allclose(
        metrics["rewards/margins"], (chosen - rejected).mean(), rtol=1e-4, atol=1e-4
    )
    np.testing.assert_allclose(metrics["logps/chosen"], pc.mean(), rtol=1e-5)


def test_dpo_policy_equal_to_reference_is_log2():
    rng = np.random.default_rng(0)
    chosen, rejected = -rng.exponential(10.0, (2, 6)).astype(np.float32)
    for loss_type in ("sigmoid", "robust"):
        loss, metrics = losses.dpo_loss(
            chosen, rejected, chosen, rejected, beta=0.1, loss_type=loss_type
        )
        np.testing.assert_allclose(loss, math.log(2.0), rtol=1e-6)
        assert float(metrics["rewards/margins"]) == 0.0
    loss, _ = losses.dpo_loss(chosen, rejected, chosen, rejected, beta=0.1, label_smoothing=0.2)
    np.testing.assert_allclose(loss, math.log(2.0), rtol=1e-6)
    hinge, _ = losses.dpo_loss(chosen, rejected, chosen, rejected, beta=0.1, loss_type="hinge")
    np.testing.assert_allclose(hinge, 1.0)


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_ipo_minimiser_is_half_inverse_beta(beta):
    def loss_at(h):
        return losses.dpo_loss(
            jnp.array([h]), jnp.zeros(1), jnp.zeros(1), jnp.zeros(1), beta=beta, loss_type="ipo"
        )[0]

    target = 1.0 / (2.0 * beta)
    assert float(loss_at(target)) == pytest.approx(0.0, abs=1e-12)
    assert float(jax.grad(loss_at)(jnp.float32(target))) == pytest.approx(0.0, abs=1e-6)
    assert float(loss_at(target + 0.1)) > 0 and float(loss_at(target - 0.1)) > 0


def test_robust_dpo_is_unbiased_under_label_noise():
    # rDPO: the expected loss under flips with probability ε equals the clean loss.
    h, eps, beta = 0.8, 0.2, 1.0
    args = (jnp.array([h]), jnp.zeros(1), jnp.zeros(1), jnp.zeros(1))
    flipped = (jnp.zeros(1), jnp.array([h]), jnp.zeros(1), jnp.zeros(1))
    noisy = (1 - eps) * losses.dpo_loss(*args, beta=beta, loss_type="robust", label_smoothing=eps)[
        0
    ] + eps * losses.dpo_loss(*flipped, beta=beta, loss_type="robust", label_smoothing=eps)[0]
    clean = losses.dpo_loss(*args, beta=beta)[0]
    np.testing.assert_allclose(noisy, clean, rtol=1e-6)


@pytest.mark.parametrize("loss_type", losses.DPO_LOSS_TYPES)
def test_dpo_gradients_match_finite_differences(loss_type):
    rng = np.random.default_rng(3)
    args = [-rng.exponential(3.0, 5) for _ in range(4)]
    eps = 0.1 if loss_type in ("sigmoid", "robust") else 0.0
    grads_match_finite_differences(
        lambda *a: losses.dpo_loss(*a, beta=0.3, loss_type=loss_type, label_smoothing=eps)[0],
        args,
        argnums=(0, 1, 2, 3),
    )


def test_simpo_matches_reference_and_closed_form():
    rng = np.random.default_rng(1)
    chosen, rejected = -rng.exponential(1.0, (2, 7)).astype(np.float32)
    loss, metrics = losses.simpo_loss(chosen, rejected, beta=2.0, gamma=0.5, label_smoothing=0.1)
    z = 2.0 * (chosen.astype(np.float64) - rejected) - 0.5
    expected = np.mean(-0.9 * log_sigmoid(z) - 0.1 * log_sigmoid(-z))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["rewards/chosen"], 2.0 * chosen.mean(), rtol=1e-5)
    # A margin exactly γ/β is the tie point.
    tie, _ = losses.simpo_loss(jnp.array([-1.0]), jnp.array([-1.25]), beta=2.0, gamma=0.5)
    np.testing.assert_allclose(tie, math.log(2.0), rtol=1e-6)


def test_orpo_matches_reference():
    rng = np.random.default_rng(2)
    chosen, rejected = -rng.exponential(1.0, (2, 7)).astype(np.float32)
    chosen[0] = -1e-4  # near the log1mexp pole
    loss, metrics = losses.orpo_loss(chosen, rejected, beta=0.1, chosen_nll=jnp.float32(2.0))
    c, r = chosen.astype(np.float64), rejected.astype(np.float64)
    log_odds = (c - np.log(1 - np.exp(c))) - (r - np.log(1 - np.exp(r)))
    ratio_loss = np.mean(-log_sigmoid(log_odds))
    np.testing.assert_allclose(loss, 2.0 + 0.1 * ratio_loss, rtol=1e-5)
    np.testing.assert_allclose(metrics["log_odds_ratio"], log_odds.mean(), rtol=1e-4)
    # Equal average log-probs: odds ratio 1, loss log 2.
    equal, _ = losses.orpo_loss(jnp.array([-0.5]), jnp.array([-0.5]), beta=1.0)
    np.testing.assert_allclose(equal, math.log(2.0), rtol=1e-6)


def test_orpo_gradients_match_finite_differences():
    args = [np.array([-0.01, -0.9, -3.0]), np.array([-0.5, -0.05, -2.0])]
    grads_match_finite_differences(
        lambda c, r: losses.orpo_loss(c, r, beta=0.2)[0], args, argnums=(0, 1)
    )


@pytest.mark.parametrize("bad", POISONS)
def test_preference_losses_ignore_masked_rows(bad):
    rng = np.random.default_rng(4)
    logps = [-rng.exponential(1.0, 5).astype(np.float32) for _ in range(4)]
    mask = np.array([1, 0, 1, 1, 0])
    dirty = [np.where(mask == 1, x, bad).astype(np.float32) for x in logps]

    def run(args):
        fns = [
            lambda *a: losses.dpo_loss(*a, beta=0.1, mask=mask),
            lambda *a: losses.simpo_loss(a[0], a[1], mask=mask),
            lambda *a: losses.orpo_loss(a[0], a[1], mask=mask),
        ]
        out = []
        for fn in fns:
            (loss, metrics), grads = jax.value_and_grad(
                lambda *a, fn=fn: fn(*a), argnums=(0, 1, 2, 3), has_aux=True
            )(*args)
            out += [loss, *grads, *metrics.values()]
        return out

    for c, d in zip(run(logps), run(dirty), strict=True):
        np.testing.assert_array_equal(c, d)
    expected, _ = losses.dpo_loss(*(x[mask == 1] for x in logps), beta=0.1)
    np.testing.assert_allclose(run(logps)[0], expected, rtol=1e-6)


def test_dpo_bad_arguments_name_the_field():
    z = jnp.zeros(3)
    with pytest.raises(ValueError, match="loss_type"):
        losses.dpo_loss(z, z, z, z, beta=0.1, loss_type="kto")
    with pytest.raises(ValueError, match="beta"):
        losses.dpo_loss(z, z, z, z, beta=0.0)
    with pytest.raises(ValueError, match="ref_rejected_B"):
        losses.dpo_loss(z, z, z, jnp.zeros(4), beta=0.1)
    with pytest.raises(ValueError, match="label_smoothing"):
        losses.dpo_loss(z, z, z, z, beta=0.1, loss_type="ipo", label_smoothing=0.1)


def test_dpo_family_traces_once_per_shape():
    dpo = jax.jit(chex.assert_max_traces(lambda *a: losses.dpo_loss(*a, beta=0.1), n=1))
    simpo = jax.jit(chex.assert_max_traces(losses.simpo_loss, n=1))
    orpo = jax.jit(chex.assert_max_traces(losses.orpo_loss, n=1))
    for seed in range(3):
        rng = np.random.default_rng(seed)
        a = [-rng.exponential(1.0, 4).astype(np.float32) for _ in range(4)]
        dpo(*a)
        simpo(a[0], a[1])
        orpo(a[0], a[1])


@given(st.integers(0, 2**31 - 1), st.integers(1, 8), st.sampled_from([0.0, 0.1]))
def test_dpo_soft_labels_match_float64_reference(seed, batch, eps):
    rng = np.random.default_rng(seed)
    pc, pr, rc, rr = _random_logps(rng, batch)
    q = rng.uniform(0, 1, batch).astype(np.float32)
    beta = 0.3
    loss, _ = losses.dpo_loss(
        *(jnp.asarray(x) for x in (pc, pr, rc, rr)),
        beta=beta,
        label_smoothing=eps,
        label=jnp.asarray(q),
    )
    h = (pc.astype(float) - rc) - (pr.astype(float) - rr)
    t = (1 - eps) * q.astype(float) + eps * (1 - q.astype(float))
    expected = np.mean(-t * log_sigmoid(beta * h) - (1 - t) * log_sigmoid(-beta * h))
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)
    # A hard label q = 1 is the plain sigmoid loss.
    hard, _ = losses.dpo_loss(*(jnp.asarray(x) for x in (pc, pr, rc, rr)), beta=beta)
    ones, _ = losses.dpo_loss(
        *(jnp.asarray(x) for x in (pc, pr, rc, rr)), beta=beta, label=jnp.ones(batch)
    )
    np.testing.assert_allclose(ones, hard, rtol=1e-6)


def test_dpo_soft_labels_need_the_sigmoid_loss():
    x = jnp.zeros(2)
    with pytest.raises(ValueError, match="loss_type='sigmoid' only"):
        losses.dpo_loss(x, x, x, x, beta=0.1, loss_type="ipo", label=jnp.ones(2))
