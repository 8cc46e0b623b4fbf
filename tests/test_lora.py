"""LoRA adapters: the maths against float64, identity at init, switching off, merging, the HF
peft export loaded by peft itself, and training that moves only the adapters (and a head)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from model_testing import forward, hf_checkpoint, hf_logits, random_batch
from training_testing import TINY

from rlhf_jax import models, placement, sharding
from rlhf_jax.models import lora, lora_export
from rlhf_jax.models.layers import Dense
from rlhf_jax.training import dpo

ALL = ("q", "k", "v", "o", "gate", "up", "down")


def _adapted_lm(config=TINY, seed=0, **lora_kwargs):
    base = models.CausalLM(config, rngs=nnx.Rngs(seed))
    model = models.CausalLM(config, rngs=nnx.Rngs(seed))
    return base, lora.add_adapters(model, lora.LoraConfig(**lora_kwargs))


def _randomise_b(model, seed=1, scale=0.3):
    """Moves every B off zero (as training would), so that adapters change the output."""
    key = jax.random.key(seed)
    for i, (_, m) in enumerate(lora.adapted(model)):
        b = m.lora_b.get_value()
        m.lora_b.set_value(scale * jax.random.normal(jax.random.fold_in(key, i), b.shape))
    return model


def _batch():
    tokens, mask = random_batch(0, 3, 10, pads=[0, 2, 4])
    return np.asarray(tokens % TINY.vocab_size), mask


def test_dense_adapter_matches_float64_reference():
    cfg = TINY
    dense = Dense(
        (32,), (4, 8), in_names=("embed",), out_names=("heads", "head_dim"),
        use_bias=True, config=cfg, rngs=nnx.Rngs(0),
    )  # fmt: skip
    dense.bias.set_value(jax.random.normal(jax.random.key(3), (4, 8)))
    lora._attach(dense, lora.LoraConfig(rank=3, alpha=6.0), jax.random.key(1))
    dense.lora_b.set_value(jax.random.normal(jax.random.key(2), (3, 4, 8)))
    x = np.asarray(jax.random.normal(jax.random.key(4), (2, 5, 32)))
    w, a, b, bias = (
        np.asarray(v.get_value(), np.float64)
        for v in (dense.kernel, dense.lora_a, dense.lora_b, dense.bias)
    )
    want = (
        np.einsum("btd,dhk->bthk", x, w)
        + bias
        + 2.0 * np.einsum("btr,rhk->bthk", np.einsum("btd,dr->btr", x, a), b)
    )
    np.testing.assert_allclose(np.asarray(dense(jnp.asarray(x))), want, rtol=2e-5, atol=2e-5)
    # A ~ U(−1/√fan_in, 1/√fan_in), as peft draws it.
    assert np.abs(a).max() <= 1 / np.sqrt(32) and np.abs(a).max() > 0.5 / np.sqrt(32)


def test_scale_and_rslora():
    assert lora.LoraConfig(rank=4, alpha=8).scale == 2.0
    assert lora.LoraConfig(rank=4, alpha=8, rslora=True).scale == 4.0


@pytest.mark.parametrize("targets", [("q", "v"), ALL, (r"trunk\.layers\.mlp\..*",)])
def test_adapted_model_equals_base_at_init(targets):
    base, model = _adapted_lm(targets=targets, rank=4)
    tokens, mask = _batch()
    np.testing.assert_array_equal(forward(model, tokens, mask), forward(base, tokens, mask))
    names = {str(p[-1]) for p, _ in lora.adapted(model)}
    assert names == ({"gate", "up", "down"} if targets[0].startswith("trunk") else set(targets))
    for _, m in lora.adapted(model):  # one adapter per layer of the stack
        assert m.lora_a.shape[0] == TINY.num_layers and m.lora_b.shape[0] == TINY.num_layers
        assert not np.any(np.asarray(m.lora_b.get_value()))


def test_switched_off_is_the_base_and_merged_is_the_adapted():
    base, model = _adapted_lm(targets=ALL, rank=4)
    _randomise_b(model)
    tokens, mask = _batch()
    adapted = forward(model, tokens, mask)
    assert np.abs(adapted - forward(base, tokens, mask)).max() > 1e-2  # the adapters act
    with lora.switched_off(model):
        np.testing.assert_array_equal(forward(model, tokens, mask), forward(base, tokens, mask))
    np.testing.assert_allclose(forward(lora.merge_adapters(model), tokens, mask), adapted,
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    assert not lora.has_adapters(model)


def test_switched_off_under_jit_equals_a_frozen_copy_in_dpo():
    """DPO's reference by switching the adapters off equals a real frozen copy of the base."""
    from training_testing import pair_batch

    base, model = _adapted_lm(targets=ALL, rank=4)
    _randomise_b(model)
    batch = {k: jnp.asarray(v) for k, v in pair_batch(0).items()}
    g, adapters, rest = nnx.split(model, lora.trainable, ...)
    bg, bparams = nnx.split(base, nnx.Param)
    cfg = dpo.DPOLossConfig(share_prompt=False, precompute_reference=False)
    by_switch = jax.jit(lambda p: dpo.reference_logprobs(g, p, rest, batch))(adapters)
    by_copy = jax.jit(lambda p: dpo.reference_logprobs(bg, p, nnx.State({}), batch))(bparams)
    np.testing.assert_array_equal(np.asarray(by_switch), np.asarray(by_copy))
    frozen_copy = {"rest": rest, "extra": adapters}  # same switch, explicitly given
    loss_a, _ = dpo.dpo_step_loss(adapters, {"rest": rest}, batch, None, graphdef=g, config=cfg)
    loss_b, _ = dpo.dpo_step_loss(adapters, frozen_copy, batch, None, graphdef=g, config=cfg)
    assert float(loss_a) == float(loss_b)


def test_dropout_only_with_a_key_and_per_layer():
    _, model = _adapted_lm(targets=("q",), rank=4, dropout=0.5)
    _randomise_b(model)
    tokens, mask = _batch()
    g, adapters, rest = nnx.split(model, lora.trainable, ...)

    @jax.jit
    def run(adapters, key):
        m = lora.with_dropout(nnx.merge(g, adapters, rest), key)
        pos = models.positions_from_mask(mask)
        return m(jnp.asarray(tokens), positions_BxT=pos, attn_mask_BxT=jnp.asarray(mask))

    plain = forward(model, tokens, mask)
    a, b = run(adapters, jax.random.key(0)), run(adapters, jax.random.key(1))
    assert np.abs(np.asarray(a) - plain).max() > 1e-3 and np.abs(np.asarray(a - b)).max() > 1e-3
    np.testing.assert_array_equal(np.asarray(run(adapters, jax.random.key(0))), np.asarray(a))
    m = lora.with_dropout(nnx.merge(g, adapters, rest), jax.random.key(0))
    keys = np.asarray(lora.adapted(m)[0][1].lora_key.get_value())
    assert keys.shape == (TINY.num_layers, 2) and not np.array_equal(keys[0], keys[1])


def test_base_dtype_stores_the_frozen_base_low():
    _, model = _adapted_lm(targets=("q", "v"), rank=4, base_dtype="bfloat16")
    _, adapters, base = nnx.split(model, lora.trainable, ...)
    assert {x.dtype for x in jax.tree.leaves(adapters)} == {jnp.dtype("float32")}
    assert {x.dtype for x in jax.tree.leaves(base)} == {jnp.dtype("bfloat16")}


def test_bad_configs_are_named():
    with pytest.raises(ValueError, match=r"lora\.rank"):
        lora.LoraConfig(rank=-1)
    with pytest.raises(ValueError, match="positive rank"):
        _adapted_lm(rank=0)
    with pytest.raises(ValueError, match=r"lora\.dropout"):
        lora.LoraConfig(dropout=1.0)
    with pytest.raises(ValueError, match="match no projection"):
        _adapted_lm(targets=("qkv_proj",))
    with pytest.raises(ValueError, match="lora: unknown fields"):
        lora.LoraConfig.from_dict({"rank": 4, "r": 4})


def test_placed_model_trains_adapters_and_head_only():
    mesh = sharding.make_mesh(sharding.MeshConfig(num_devices=1))
    cfg = lora.LoraConfig(rank=2, targets=("q", "v"))
    source = placement.ModelSource(init=TINY, tokenizer="-", lora=cfg)
    for head, extra in (("lm", set()), ("reward", {"head"})):
        placed = placement.place_model(source, head=head, mesh=mesh)
        flat = nnx.to_flat_state(placed.params)
        kinds = {type(v).__name__ for _, v in flat}
        assert kinds <= {"LoraParam", "Param"}
        trained = {str(p[0]) for p, v in flat if type(v).__name__ == "Param"}
        assert trained == extra
        assert {str(p[-1]) for p, v in flat if type(v).__name__ == "LoraParam"} == {
            "lora_a", "lora_b"
        }  # fmt: skip


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_peft_loads_the_adapter_with_equal_logits(arch, tmp_path):
    peft = pytest.importorskip("peft")
    directory, hf_model = hf_checkpoint(arch)
    model = models.load_pretrained(directory)
    config = lora.LoraConfig(rank=4, alpha=8.0, targets=ALL)
    _randomise_b(lora.add_adapters(model, config), scale=0.5)
    lora_export.save_peft_adapter(
        model, tmp_path / "adapter", config=config, base_model=str(directory)
    )
    tokens, mask = random_batch(1, 2, 9, pads=[0, 3])
    base_logits = hf_logits(hf_model, tokens, mask)
    fresh = type(hf_model).from_pretrained(directory).eval()
    with torch.no_grad():
        peft_model = peft.PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    ours = forward(model, tokens, mask)
    theirs = hf_logits(peft_model, tokens, mask)
    assert np.abs(theirs - base_logits)[mask].max() > 1e-2  # the adapters act in peft too
    np.testing.assert_allclose(ours[mask], theirs[mask], rtol=1e-4, atol=1e-4)
    # The merged export reloads in transformers to the same logits.
    models.save_pretrained(lora.merge_adapters(model), tmp_path / "merged")
    merged = type(hf_model).from_pretrained(tmp_path / "merged").eval()
    np.testing.assert_allclose(hf_logits(merged, tokens, mask)[mask], theirs[mask],
                               rtol=1e-4, atol=1e-4)  # fmt: skip


def test_fused_families_refuse_peft_export(tmp_path):
    directory, _ = hf_checkpoint("gpt2")
    model = lora.add_adapters(models.load_pretrained(directory), lora.LoraConfig(targets=("q",)))
    with pytest.raises(ValueError, match="fuses its projections"):
        lora_export.save_peft_adapter(model, tmp_path, config=lora.LoraConfig())
