"""benchmarks/same_math.py compares backends only if both sides compute the same function: the
JAX and PyTorch trunks must agree (loss and every gradient), and our `Transformer` holding the
same weights must produce the plain-JAX trunk's output."""

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import same_math as sm

SMALL = dict(batch=2, seq=8, width=16, heads=2, mlp=32, layers=2)


@pytest.mark.parametrize("attention", [True, False])
def test_jax_and_torch_trunks_agree_on_loss_and_gradients(attention):
    params, x0 = sm.init_params(SMALL, seed=1)
    loss_j, grads_j = jax.value_and_grad(sm.jax_loss(SMALL, attention))(
        jax.tree.map(jnp.asarray, params), jnp.asarray(x0)
    )
    params_t = [{n: torch.from_numpy(w).requires_grad_() for n, w in p.items()} for p in params]
    loss_t = sm.torch_loss(SMALL, attention)(params_t, torch.from_numpy(x0))
    loss_t.backward()
    np.testing.assert_allclose(float(loss_j), loss_t.item(), rtol=1e-5)
    for layer_j, layer_t in zip(grads_j, params_t, strict=True):
        for name, g in layer_j.items():
            ref = layer_t[name].grad.numpy()
            scale = np.abs(ref).max()
            assert scale > 0, name
            np.testing.assert_allclose(np.asarray(g) / scale, ref / scale, atol=2e-5, err_msg=name)


def test_the_no_attention_case_is_a_different_function():
    params, x0 = sm.init_params(SMALL)
    p, x = jax.tree.map(jnp.asarray, params), jnp.asarray(x0)
    with_attention = sm.jax_trunk(SMALL, True)(p, x)
    without = sm.jax_trunk(SMALL, False)(p, x)
    assert float(jnp.abs(with_attention - without).max()) > 1e-3


def test_our_transformer_with_the_same_weights_computes_the_plain_trunk():
    params, _ = sm.init_params(SMALL, seed=2)
    model = sm.transformer_with(SMALL, params, vocab=11)
    b, t = SMALL["batch"], SMALL["seq"]
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 11, (b, t)), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    ours, _ = model(tokens, positions_BxT=positions, attn_mask_BxT=jnp.ones((b, t), bool))

    # The plain trunk on the same embedded tokens, then the final RMSNorm (its scale is 1).
    x0 = jnp.take(model.embed[...], tokens, axis=0)
    h = sm.jax_trunk(SMALL)(jax.tree.map(jnp.asarray, params), x0)
    h = h * jax.lax.rsqrt(jnp.mean(h * h, -1, keepdims=True) + sm.EPS)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(h), rtol=1e-5, atol=1e-5)


def test_trunk_flops_closed_form():
    # Per layer forward: 2·B·T·(4·D² + 3·D·F) = 2·16·(1024 + 1536) and attention 2·2·B·T²·D.
    per_layer = 2 * 16 * (4 * 256 + 3 * 16 * 32) + 2 * 2 * 2 * 64 * 16
    assert sm.trunk_flops(SMALL, True) == 3 * 2 * per_layer
    assert sm.trunk_flops(SMALL, False) == 3 * 2 * 2 * 16 * (4 * 256 + 3 * 16 * 32)
