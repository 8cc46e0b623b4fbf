"""Bradley–Terry and K-wise ranking losses against float64 references and closed forms."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from loss_testing import grads_match_finite_differences

from rlhf_jax import losses


def _log_sigmoid(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def bt_reference(chosen, rejected, margin, eps, center):
    total = 0.0
    for c, r, m in zip(chosen, rejected, margin, strict=True):
        d = c - r - m
        total += -(1 - eps) * _log_sigmoid(d) - eps * _log_sigmoid(-d) + center * (c + r) ** 2
    return total / len(chosen)


@given(
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(1, 12),
    eps=st.sampled_from([0.0, 0.1, 0.3]),
    center=st.sampled_from([0.0, 0.01]),
    use_margin=st.booleans(),
)
def test_bradley_terry_matches_reference(seed, batch, eps, center, use_margin):
    rng = np.random.default_rng(seed)
    chosen, rejected = rng.normal(0, 3, (2, batch))
    margin = rng.uniform(0, 2, batch) if use_margin else np.zeros(batch)
    loss, metrics = losses.bradley_terry_loss(
        jnp.asarray(chosen, jnp.float32),
        jnp.asarray(rejected, jnp.float32),
        margin=jnp.asarray(margin, jnp.float32) if use_margin else None,
        label_smoothing=eps,
        center_coef=center,
    )
    # The reference sees the same float32-rounded inputs.
    c32, r32 = chosen.astype(np.float32), rejected.astype(np.float32)
    m32 = margin.astype(np.float32)
    expected = bt_reference(c32.astype(float), r32.astype(float), m32.astype(float), eps, center)
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["accuracy"], np.mean(c32 > r32), rtol=1e-6)
    np.testing.assert_allclose(metrics["margin"], np.mean(c32 - r32), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(metrics["chosen_reward"], np.mean(c32), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["rejected_reward"], np.mean(r32), rtol=1e-5, atol=1e-6)


def test_bradley_terry_equal_rewards_is_log2():
    rewards = jnp.array([-3.0, 0.0, 0.5, 7.0])
    loss, metrics = losses.bradley_terry_loss(rewards, rewards)
    np.testing.assert_allclose(loss, math.log(2.0), rtol=1e-7)
    assert metrics["accuracy"] == 0.0  # a tie is not a correct ranking
    # Label smoothing keeps log 2 at a tie: both labels are equally likely.
    loss, _ = losses.bradley_terry_loss(rewards, rewards, label_smoothing=0.2)
    np.testing.assert_allclose(loss, math.log(2.0), rtol=1e-7)


def test_bradley_terry_margin_shifts_the_decision_point():
    # With margin m, r_c − r_r = m is the tie point.
    loss, _ = losses.bradley_terry_loss(jnp.array([2.0]), jnp.array([1.0]), margin=1.0)
    np.testing.assert_allclose(loss, math.log(2.0), rtol=1e-7)


def test_bradley_terry_centering_penalty_closed_form():
    chosen, rejected = jnp.array([1.0, 2.0]), jnp.array([1.0, 2.0])
    loss, _ = losses.bradley_terry_loss(chosen, rejected, center_coef=0.5)
    np.testing.assert_allclose(loss, math.log(2.0) + 0.5 * (4.0 + 16.0) / 2, rtol=1e-6)


def test_bradley_terry_batch_mask_drops_padded_rows():
    chosen = jnp.array([1.0, 0.0, np.inf])
    rejected = jnp.array([0.0, 2.0, np.nan])
    mask = jnp.array([1, 1, 0])
    loss, metrics = losses.bradley_terry_loss(chosen, rejected, mask=mask)
    expected, _ = losses.bradley_terry_loss(chosen[:2], rejected[:2])
    np.testing.assert_array_equal(loss, expected)
    assert metrics["accuracy"] == 0.5
    grads = jax.grad(lambda c, r: losses.bradley_terry_loss(c, r, mask=mask)[0], (0, 1))(
        chosen, rejected
    )
    for g in grads:
        assert np.all(np.isfinite(g)) and g[2] == 0.0


def test_bradley_terry_bf16_inputs_compute_in_float32():
    chosen = jnp.array([0.5, 1.5], jnp.bfloat16)
    loss, metrics = losses.bradley_terry_loss(chosen, jnp.zeros(2, jnp.bfloat16))
    assert loss.dtype == jnp.float32 and metrics["margin"].dtype == jnp.float32


@pytest.mark.parametrize("eps,center,margin", [(0.0, 0.0, 0.0), (0.1, 0.05, 0.7)])
def test_bradley_terry_gradients_match_finite_differences(eps, center, margin):
    rng = np.random.default_rng(0)
    chosen, rejected = rng.normal(size=(2, 6))
    grads_match_finite_differences(
        lambda c, r: losses.bradley_terry_loss(
            c, r, margin=margin, label_smoothing=eps, center_coef=center
        )[0],
        [chosen, rejected],
        argnums=(0, 1),
    )


def test_bradley_terry_rejects_bad_shapes():
    with pytest.raises(ValueError, match="rejected_B"):
        losses.bradley_terry_loss(jnp.zeros(3), jnp.zeros(4))
    with pytest.raises(ValueError, match="label_smoothing"):
        losses.bradley_terry_loss(jnp.zeros(3), jnp.zeros(3), label_smoothing=0.5)


def ranking_reference(rewards, ranks, mask):
    per_prompt_loss, per_prompt_acc, pairs = [], [], 0
    for r, k, m in zip(rewards, ranks, mask, strict=True):
        terms, correct = [], []
        for i in range(len(r)):
            for j in range(len(r)):
                if m[i] and m[j] and k[i] < k[j]:
                    terms.append(-_log_sigmoid(float(r[i]) - float(r[j])))
                    correct.append(float(r[i] > r[j]))
        if terms:
            per_prompt_loss.append(np.mean(terms))
            per_prompt_acc.append(np.mean(correct))
            pairs += len(terms)
    if not per_prompt_loss:
        return 0.0, 0.0, 0
    return np.mean(per_prompt_loss), np.mean(per_prompt_acc), pairs


@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 5), k=st.integers(2, 6))
def test_ranking_loss_matches_reference(seed, batch, k):
    rng = np.random.default_rng(seed)
    rewards = rng.normal(0, 2, (batch, k)).astype(np.float32)
    ranks = rng.integers(0, k, (batch, k))  # repeats are ties
    mask = rng.random((batch, k)) < 0.8
    loss, metrics = losses.ranking_loss(rewards, ranks, mask)
    expected_loss, expected_acc, pairs = ranking_reference(rewards, ranks, mask)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["accuracy"], expected_acc, rtol=1e-6, atol=1e-7)
    assert int(metrics["num_pairs"]) == pairs


def test_ranking_loss_with_two_responses_is_bradley_terry():
    rewards = jnp.array([[1.0, -0.5], [0.2, 0.7]])
    loss, _ = losses.ranking_loss(rewards, jnp.array([[0, 1], [1, 0]]), jnp.ones((2, 2)))
    bt, _ = losses.bradley_terry_loss(jnp.array([1.0, 0.7]), jnp.array([-0.5, 0.2]))
    np.testing.assert_allclose(loss, bt, rtol=1e-6)


def test_ranking_loss_weighs_prompts_equally():
    # Prompt 0 has 6 pairs (K=4, all ranked), prompt 1 one pair: still a plain mean of two.
    rewards = jnp.array([[0.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0]])
    ranks = jnp.array([[0, 1, 2, 3], [0, 1, 0, 0]])
    mask = jnp.array([[1, 1, 1, 1], [1, 1, 0, 0]])
    loss, metrics = losses.ranking_loss(rewards, ranks, mask)
    np.testing.assert_allclose(loss, (math.log(2) + -_log_sigmoid(3.0)) / 2, rtol=1e-6)
    assert int(metrics["num_pairs"]) == 7


def test_ranking_loss_ties_carry_no_pair():
    rewards = np.array([[1.0, 2.0, 0.0]], np.float32)
    loss, metrics = losses.ranking_loss(rewards, np.array([[0, 0, 0]]), np.ones((1, 3)))
    assert int(metrics["num_pairs"]) == 0 and float(loss) == 0.0


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan, 1e30])
def test_ranking_loss_padding_invariance(bad):
    rng = np.random.default_rng(1)
    rewards = rng.normal(size=(3, 4)).astype(np.float32)
    ranks = np.array([[0, 1, 2, 3], [3, 2, 1, 0], [0, 0, 1, 2]])
    mask = np.array([[1, 1, 1, 0], [1, 0, 1, 1], [1, 1, 1, 1]])
    poisoned = rewards.copy()
    poisoned[mask == 0] = bad
    poisoned_ranks = np.where(mask == 1, ranks, -7)

    def value_and_grad(r, k):
        return jax.value_and_grad(lambda x: losses.ranking_loss(x, k, mask)[0])(r)

    (clean_loss, clean_grad), (dirty_loss, dirty_grad) = (
        value_and_grad(rewards, ranks),
        value_and_grad(poisoned, poisoned_ranks),
    )
    np.testing.assert_array_equal(clean_loss, dirty_loss)
    np.testing.assert_array_equal(clean_grad, dirty_grad)
    assert np.all(clean_grad[mask == 0] == 0)


def test_reward_losses_trace_once_per_shape():
    bt = jax.jit(chex.assert_max_traces(lambda c, r: losses.bradley_terry_loss(c, r), n=1))
    rank = jax.jit(chex.assert_max_traces(losses.ranking_loss, n=1))
    for seed in range(3):
        rng = np.random.default_rng(seed)
        bt(rng.normal(size=4).astype(np.float32), rng.normal(size=4).astype(np.float32))
        rank(
            rng.normal(size=(2, 3)).astype(np.float32),
            rng.integers(0, 3, (2, 3)).astype(np.int32),
            (rng.random((2, 3)) < 0.5),
        )


def soft_bt_reference(chosen, rejected, label, eps):
    """Cross-entropy of σ(r_c − r_r) to the target (1−ε) q + ε (1 − q), float64."""
    total = 0.0
    for c, r, q in zip(chosen, rejected, label, strict=True):
        t = (1 - eps) * q + eps * (1 - q)
        d = float(c) - float(r)
        total += -t * _log_sigmoid(d) - (1 - t) * _log_sigmoid(-d)
    return total / len(chosen)


@given(
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(1, 12),
    eps=st.sampled_from([0.0, 0.1]),
)
def test_bradley_terry_soft_labels_match_float64_reference(seed, batch, eps):
    rng = np.random.default_rng(seed)
    chosen, rejected = rng.normal(0, 3, (2, batch)).astype(np.float32)
    label = rng.uniform(0, 1, batch).astype(np.float32)
    loss, _ = losses.bradley_terry_loss(
        jnp.asarray(chosen), jnp.asarray(rejected), label=jnp.asarray(label), label_smoothing=eps
    )
    expected = soft_bt_reference(chosen, rejected, label.astype(float), eps)
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)


def test_bradley_terry_soft_label_closed_forms():
    c, r = jnp.array([1.5, -0.5]), jnp.array([0.0, 0.7])
    hard, _ = losses.bradley_terry_loss(c, r)
    ones, _ = losses.bradley_terry_loss(c, r, label=jnp.ones(2))
    np.testing.assert_allclose(ones, hard, rtol=1e-7)  # q = 1 is the hard label
    # q = 1/2 at equal rewards: log 2; and the loss is minimised where σ(Δ) = q.
    half, _ = losses.bradley_terry_loss(jnp.zeros(1), jnp.zeros(1), label=jnp.array([0.5]))
    np.testing.assert_allclose(half, math.log(2.0), rtol=1e-7)
    q = 0.8
    grad = jax.grad(lambda d: losses.bradley_terry_loss(d, jnp.zeros(1), label=jnp.array([q]))[0])(
        jnp.array([math.log(q / (1 - q))])
    )
    np.testing.assert_allclose(grad, 0.0, atol=1e-6)
    # Swapping chosen and rejected with q → 1 − q is the same loss.
    a, _ = losses.bradley_terry_loss(c, r, label=jnp.array([0.7, 0.2]))
    b, _ = losses.bradley_terry_loss(r, c, label=jnp.array([0.3, 0.8]))
    np.testing.assert_allclose(a, b, rtol=1e-6)
    # Label smoothing of a soft label: q = 0.9 with ε = 0.1 is the target 0.82.
    s, _ = losses.bradley_terry_loss(c, r, label=jnp.full(2, 0.9), label_smoothing=0.1)
    t, _ = losses.bradley_terry_loss(c, r, label=jnp.full(2, 0.82))
    np.testing.assert_allclose(s, t, rtol=1e-6)


def test_bradley_terry_soft_labels_ignore_masked_rows():
    c, r = jnp.array([1.0, np.inf]), jnp.array([0.0, np.nan])
    label, mask = jnp.array([0.7, np.nan]), jnp.array([1, 0])
    loss, _ = losses.bradley_terry_loss(c, r, label=label, mask=mask)
    expected, _ = losses.bradley_terry_loss(c[:1], r[:1], label=label[:1])
    np.testing.assert_array_equal(loss, expected)
    grads = jax.grad(
        lambda c, r: losses.bradley_terry_loss(c, r, label=label, mask=mask)[0], (0, 1)
    )(c, r)
    for g in grads:
        assert np.all(np.isfinite(g)) and g[1] == 0.0
