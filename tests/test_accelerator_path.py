"""The accelerator path of the models: scanned layers, remat, fused attention, chunked log-probs.

Each is checked against what it replaces (a Python loop over separate blocks, no remat, the
hand-written attention, the unchunked log-softmax) and against float64 or closed-form values;
program size and memory are read from XLA's compiled programs on the CPU.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from model_testing import ARCHS, random_batch

from rlhf_jax import checkpoint as ckpt_lib
from rlhf_jax import losses, sharding
from rlhf_jax.models import CausalLM, ModelConfig, from_hf_dict, positions_from_mask
from rlhf_jax.models.attention import attend, fused_attention, rope_sin_cos
from rlhf_jax.models.transformer import Block, layer_slice, stack_blocks
from rlhf_jax.placement import ModelSource, model_config, place_model


def _config(arch="qwen2", **changes) -> ModelConfig:
    return from_hf_dict(ARCHS[arch]().to_dict()).replace(**changes)


def _model(arch="qwen2", seed=0, **changes) -> CausalLM:
    return CausalLM(_config(arch, **changes), rngs=nnx.Rngs(seed))


# ---------------------------------------------------------------------------------------------
# Scanned layers


def test_stacked_block_holds_each_layer_at_its_index():
    cfg = _config()
    blocks = [Block(cfg, rngs=nnx.Rngs(i)) for i in range(3)]
    stacked = stack_blocks(blocks)
    kernel = stacked.attn.q.kernel
    assert kernel.shape == (3, *blocks[0].attn.q.kernel.shape)
    assert kernel.get_metadata()["out_sharding"] == ("layers", "embed", "heads", "head_dim")
    _, state = nnx.split(stacked)
    for i, block in enumerate(blocks):
        for (path, a), (_, b) in zip(
            nnx.to_flat_state(nnx.split(block)[1]),
            nnx.to_flat_state(layer_slice(state, i)),
            strict=True,
        ):
            np.testing.assert_array_equal(a.get_value(), b.get_value(), err_msg=str(path))


@pytest.mark.parametrize("arch", ["qwen2", "gpt2", "gpt_neox"])
def test_scan_equals_a_loop_over_the_layers(arch):
    """The scanned trunk gives the hidden states of applying layer 0, 1, … in a Python loop."""
    model = _model(arch)
    tokens, mask = random_batch(0, 3, 12, pads=[0, 3, 5])
    positions = positions_from_mask(mask)
    h = jax.jit(model.hidden_states)(tokens, positions_BxT=positions, attn_mask_BxT=mask)

    cfg = model.config
    graphdef, state = nnx.split(model.trunk)

    @jax.jit
    def loop(state):
        trunk = nnx.merge(graphdef, state)
        x = jnp.take(trunk.embed[...], tokens, axis=0)
        if trunk.pos_embed is not None:
            x = x + jnp.take(trunk.pos_embed[...], positions, axis=0)
        sin_cos = rope_sin_cos(cfg, positions) if cfg.positions == "rope" else None
        causal = jnp.tril(jnp.ones((12, 12), bool))[None] & mask[:, None, :].astype(bool)
        block, layers = nnx.split(trunk.layers)
        for i in range(cfg.num_layers):
            x, _ = nnx.merge(block, layer_slice(layers, i))(x, sin_cos=sin_cos, mask_BxTxS=causal)
        return trunk.final_norm(x)

    # Both programs jitted: the same operations, fused apart (a loop body against unrolled
    # layers), so they round alike to within a few float32 ulps.
    np.testing.assert_allclose(h, loop(state), rtol=1e-6, atol=1e-6)


def _grad_program(cfg: ModelConfig, batch=2, length=32):
    model = nnx.eval_shape(lambda: CausalLM(cfg, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(model)

    def loss(params, tokens):
        m = nnx.merge(graphdef, params)
        positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
        h = m.hidden_states(tokens, positions_BxT=positions, attn_mask_BxT=tokens >= 0)
        return jnp.mean(h**2)

    tokens = jax.ShapeDtypeStruct((batch, length), jnp.int32)
    return jax.jit(jax.grad(loss)).lower(params, tokens).compile()


@pytest.mark.parametrize("unroll", [2, 3])
def test_scan_unroll_changes_the_program_not_the_results(unroll):
    """Unrolling 2 of the 3 layers per iteration (a remainder of one) or all of them."""
    tokens, mask = random_batch(2, 2, 16, pads=[0, 4])
    base_loss, base_grads = _loss_and_grads(_model(num_layers=3), tokens, mask)
    loss, grads = _loss_and_grads(_model(num_layers=3, scan_unroll=unroll), tokens, mask)
    np.testing.assert_allclose(loss, base_loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(base_grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    if unroll >= 3:  # no loop left (XLA removes the others' one-trip loops itself)
        assert " while(" in _grad_program(_config(num_layers=3)).as_text()
        assert " while(" not in _grad_program(_config(num_layers=3, scan_unroll=unroll)).as_text()


def test_program_size_does_not_grow_with_depth():
    small = _grad_program(_config(num_layers=2)).as_text().count("\n")
    deep = _grad_program(_config(num_layers=12)).as_text().count("\n")
    assert deep < 1.5 * small, (small, deep)


# ---------------------------------------------------------------------------------------------
# Remat


def _loss_and_grads(model, tokens, mask):
    graphdef, params = nnx.split(model)

    def loss(params):
        m = nnx.merge(graphdef, params)
        h = m.hidden_states(tokens, positions_BxT=positions_from_mask(mask), attn_mask_BxT=mask)
        return jnp.mean(m.logits(h) ** 2)

    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("policy", ["block", "dots"])
def test_remat_changes_memory_not_results(policy):
    tokens, mask = random_batch(1, 2, 16, pads=[0, 4])
    base_loss, base_grads = _loss_and_grads(_model(), tokens, mask)
    loss, grads = _loss_and_grads(_model(remat=policy), tokens, mask)
    np.testing.assert_allclose(loss, base_loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(base_grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_block_remat_keeps_less_than_no_remat():
    cfg = _config(num_layers=4, mlp_dim=512)
    temp = {
        policy: _grad_program(cfg.replace(remat=policy), batch=4, length=128)
        .memory_analysis()
        .temp_size_in_bytes
        for policy in ("none", "dots", "block")
    }
    assert temp["block"] < temp["dots"] < temp["none"], temp


def test_unknown_remat_or_attention_names_the_field():
    with pytest.raises(ValueError, match="remat='all'"):
        _config(remat="all")
    with pytest.raises(ValueError, match="attention='flash'"):
        _config(attention="flash")
    with pytest.raises(ValueError, match="logprob_chunk=-1"):
        _config(logprob_chunk=-1)
    with pytest.raises(ValueError, match="scan_unroll=0"):
        _config(scan_unroll=0)


def test_a_sources_step_settings_replace_the_configs_where_set():
    cfg = _config(remat="dots", scan_unroll=2)
    kept = model_config(ModelSource(init=cfg))
    assert (kept.remat, kept.scan_unroll, kept.attention) == ("dots", 2, "xla")
    changed = model_config(ModelSource(init=cfg, remat="block", logprob_chunk=64))
    assert (changed.remat, changed.logprob_chunk, changed.scan_unroll) == ("block", 64, 2)
    with pytest.raises(ValueError, match="remat='all'"):
        model_config(ModelSource(init=cfg, remat="all"))


# ---------------------------------------------------------------------------------------------
# Attention


def _attention_float64(q, k, v, mask):
    """softmax(q kᵀ/√K) v in float64, query head h reading KV head h // G; fully masked rows
    average every value (the finite mask value's uniform softmax)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b, t, h, kd = q.shape
    g = h // k.shape[2]
    out = np.zeros((b, t, h, kd))
    for head in range(h):
        s = np.einsum("btk,bsk->bts", q[:, :, head], k[:, :, head // g]) / np.sqrt(kd)
        s = np.where(mask, s, -np.inf)
        s = np.where(mask.any(-1, keepdims=True), s, 0.0)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        out[:, :, head] = np.einsum("bts,bsk->btk", p, v[:, :, head // g])
    return out


def test_fused_attention_equals_float64_and_the_cached_path():
    rng = np.random.default_rng(0)
    b, t, h, kv, kd = 2, 7, 4, 2, 8
    q, k, v = (
        rng.normal(size=s).astype(np.float32) for s in [(b, t, h, kd), *[(b, t, kv, kd)] * 2]
    )
    # Row 0: causal with two left pads; row 1: a packed pair [prompt 3 | chosen 2 | rejected 2],
    # the rejected tokens attending the prompt and themselves, not the chosen ones.
    causal = np.tril(np.ones((t, t), bool))
    row0 = causal & (np.arange(t) >= 2)[None, :]
    row1 = causal.copy()
    row1[5:, 3:5] = False
    mask = np.stack([row0, row1])
    expected = _attention_float64(q, k, v, mask)
    fused = fused_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask, "xla")
    real = mask.any(-1)  # pad queries (row 0's first two) attend to nothing: not compared
    np.testing.assert_allclose(np.asarray(fused)[real], expected[real], rtol=2e-6, atol=2e-6)
    cached = attend(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask)
    np.testing.assert_allclose(np.asarray(cached), np.asarray(fused), rtol=1e-6, atol=1e-6)
    assert np.isfinite(np.asarray(fused)).all()


def test_cudnn_attention_needs_a_half_precision_dtype():
    q = jnp.zeros((1, 4, 2, 8), jnp.float32)
    with pytest.raises(ValueError, match="attention='cudnn' needs a bfloat16"):
        fused_attention(q, q, q, jnp.ones((1, 4, 4), bool), "cudnn")


# ---------------------------------------------------------------------------------------------
# Chunked log-probs


def _unchunked(model, h, targets, mask, t):
    logits = model.logits(h)
    logp, _ = losses.sequence_logprobs(logits, targets, mask, temperature=t)
    ent = losses.entropy_from_logits(logits, mask, temperature=t)
    return logp, ent, (jnp.argmax(logits, -1) == targets) & mask


def _stats(model, h, targets, mask, t):
    s = model.token_logprobs(h, targets, mask, temperature=t, entropy=True, accuracy=True)
    return s.logp_BxN, s.entropy_BxN, s.correct_BxN


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("arch", ["qwen2", "llama"])  # tied and untied LM heads
def test_chunked_logprobs_equal_the_unchunked_path(arch, dtype):
    """2 × 7 = 14 rows in chunks of 3 (five chunks, the last padded): the same log-probs,
    entropies and argmax hits, and the same gradients through them."""
    model = _model(arch, dtype=dtype, logprob_chunk=3)
    rng = np.random.default_rng(1)
    h = jnp.asarray(rng.normal(size=(2, 7, 64)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 128, (2, 7)), jnp.int32)
    mask = jnp.asarray(rng.random((2, 7)) < 0.8)
    t = 0.7
    graphdef, params = nnx.split(model)

    def values(fn):
        return jax.jit(lambda p, h: fn(nnx.merge(graphdef, p), h, targets, mask, t))(params, h)

    got, want = values(_stats), values(_unchunked)
    for a, b in zip(got[:2], want[:2], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got[2], want[2])

    def objective(fn):
        def f(params, h):
            logp, ent, _ = fn(nnx.merge(graphdef, params), h, targets, mask, t)
            return jnp.sum(logp) + 0.1 * jnp.sum(ent)

        return jax.jit(jax.grad(f, argnums=(0, 1)))(params, h)

    (g_params, g_h), (w_params, w_h) = objective(_stats), objective(_unchunked)
    # Chunks sum the head's gradient in another order; in bfloat16 each chunk's partial sum is
    # rounded to bfloat16 (8 significant bits) before they are added: up to 2⁻⁷ of the scale.
    tol = 1e-6 if dtype == "float32" else 2**-7
    scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(w_params))
    for a, b in zip(jax.tree.leaves(g_params), jax.tree.leaves(w_params), strict=True):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * scale)
    np.testing.assert_allclose(g_h, w_h, rtol=tol, atol=tol * float(jnp.max(jnp.abs(w_h))))


def test_chunked_logprobs_closed_form_and_float64():
    model = _model("llama", logprob_chunk=4)
    # Zero hidden states: every logit is 0, so log π = −log V and H = log V exactly.
    zeros = jnp.zeros((3, 5, 64))
    targets = jnp.arange(15, dtype=jnp.int32).reshape(3, 5)
    mask = jnp.ones((3, 5), bool).at[2, 3:].set(False)
    s = model.token_logprobs(zeros, targets, mask, entropy=True)
    np.testing.assert_allclose(s.logp_BxN, np.where(mask, -np.log(128), 0), rtol=1e-6)
    np.testing.assert_allclose(s.entropy_BxN, np.where(mask, np.log(128), 0), rtol=1e-6)
    # Random hidden states against log-softmax in float64 from the head's own weights.
    h = np.random.default_rng(2).normal(size=(3, 5, 64))
    w = np.asarray(model.lm_head.kernel[...], np.float64)
    logits = h @ w
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    want = np.take_along_axis(logits, np.asarray(targets)[..., None], -1)[..., 0] - logz
    s = model.token_logprobs(jnp.asarray(h, jnp.float32), targets, mask)
    np.testing.assert_allclose(s.logp_BxN, np.where(mask, want, 0), rtol=1e-5, atol=1e-5)


def _largest_vocab_array(hlo: str, vocab: int, width: int) -> int:
    largest = 0
    for dims in re.findall(r"f32\[([0-9,]+)\]", hlo):
        shape = tuple(int(d) for d in dims.split(","))
        if vocab in shape and sorted(shape) != sorted((vocab, width)):
            largest = max(largest, int(np.prod(shape)))
    return largest


def test_chunked_logprobs_never_hold_every_row_of_logits():
    """The gradient program of 2 × 40 rows in chunks of 10: no float32 array with a vocabulary
    axis larger than a chunk's logits (the unchunked program holds all 80 rows')."""

    def program(chunk):
        model = nnx.eval_shape(lambda: _model("llama", logprob_chunk=chunk))
        graphdef, params = nnx.split(model)

        def f(params, h, targets):
            m = nnx.merge(graphdef, params)
            return jnp.sum(m.token_logprobs(h, targets, targets >= 0, entropy=True).logp_BxN)

        args = (
            jax.ShapeDtypeStruct((2, 40, 64), jnp.float32),
            jax.ShapeDtypeStruct((2, 40), jnp.int32),
        )
        return jax.jit(jax.grad(f)).lower(params, *args).compile().as_text()

    assert _largest_vocab_array(program(10), 128, 64) <= 10 * 128
    assert _largest_vocab_array(program(0), 128, 64) >= 80 * 128


def test_logprob_chunk_default_fits_the_element_budget():
    from rlhf_jax.models.config import LOGPROB_CHUNK_ELEMENTS

    assert LOGPROB_CHUNK_ELEMENTS // 151936 == 441  # Qwen2's vocabulary: 441 rows a chunk


def test_an_artifact_saved_per_layer_loads_into_the_stacked_layers(tmp_path):
    """Artifacts written before the layers were stacked (``trunk.layers.<i>.*``, each array
    under "value") load into the stacked layout, as an LM and as a reward model's trunk."""
    mesh = sharding.make_mesh()
    cfg = _config(num_layers=3)
    placed = place_model(ModelSource(init=cfg), head="lm", mesh=mesh, seed=3)
    pure = nnx.to_pure_dict(placed.params)
    layers = pure["trunk"]["layers"]
    pure["trunk"]["layers"] = {
        str(i): jax.tree.map(lambda x, i=i: x[i], layers) for i in range(cfg.num_layers)
    }
    directory = tmp_path / "sft"
    old_layout = jax.tree.map(lambda x: {"value": x}, pure)
    ckpt_lib.save_artifact(directory, old_layout, meta={"head": "lm", "model": cfg.to_dict()})
    assert "0" in ckpt_lib.artifact_tree(directory)["trunk"]["layers"]

    loaded = place_model(ModelSource(artifact=str(directory)), head="lm", mesh=mesh)
    want, got = nnx.to_flat_state(placed.params), nnx.to_flat_state(loaded.params)
    assert [path for path, _ in got] == [path for path, _ in want]
    for (path, a), (_, b) in zip(got, want, strict=True):
        assert a.get_value().sharding == b.get_value().sharding, path
        np.testing.assert_array_equal(a.get_value(), b.get_value(), err_msg=str(path))
    reward = place_model(
        ModelSource(artifact=str(directory)), head="reward", mesh=mesh, new_head=True
    )
    np.testing.assert_array_equal(
        reward.params["trunk"]["layers"]["mlp"]["down"]["kernel"][...],
        placed.params["trunk"]["layers"]["mlp"]["down"]["kernel"][...],
    )


def test_weight_decay_skips_stacked_vectors():
    """AdamW decays matrices only: a stacked norm scale is (L, D), two axes, but a vector per
    layer — not decayed; a stacked (L, D, H, K) projection is. Zero gradients leave exactly the
    decay: update = −lr · wd · θ on matrices, 0 elsewhere."""
    from rlhf_jax.training.optimizer import OptimizerConfig, make_optimizer

    model = _model(num_layers=3)
    params = nnx.state(model, nnx.Param)
    config = OptimizerConfig(
        learning_rate=1.0, schedule="constant", weight_decay=0.5, max_grad_norm=None
    )
    tx = make_optimizer(config, total_steps=1)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(tx.update)(zeros, jax.jit(tx.init)(params), params)
    layers, got = params["trunk"]["layers"], updates["trunk"]["layers"]
    assert layers["attn_norm"]["scale"].shape == (3, model.config.hidden_size)
    np.testing.assert_array_equal(got["attn_norm"]["scale"][...], 0.0)
    np.testing.assert_allclose(
        got["attn"]["q"]["kernel"][...], -0.5 * layers["attn"]["q"]["kernel"][...], rtol=1e-6
    )
    np.testing.assert_allclose(
        updates["trunk"]["embed"][...], -0.5 * params["trunk"]["embed"][...], rtol=1e-6
    )
