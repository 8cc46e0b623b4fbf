"""The NNX transformer against HF transformers (torch, float32), the KV cache against the full
forward, configs, dtypes and partition metadata."""

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec
from model_testing import (
    ARCHS,
    assert_rel_close,
    forward,
    hf_checkpoint,
    hf_logits,
    random_batch,
)

from rlhf_jax import models
from rlhf_jax.models import (
    CausalLM,
    from_hf_dict,
    load_pretrained,
    positions_from_mask,
    to_hf_dict,
)

# Left pads per row: none, some, most.
PADS = [0, 3, 7]


@pytest.mark.parametrize("arch", list(ARCHS))
def test_logits_match_hf_with_and_without_left_padding(arch):
    directory, hf = hf_checkpoint(arch)
    model = load_pretrained(directory)

    # Unpadded: HF's own default positions.
    tokens, mask = random_batch(0, 2, 12)
    assert_rel_close(forward(model, tokens, mask), hf_logits(hf, tokens, mask), rel=1e-5)

    # Left-padded: equal to HF given the same position ids, at every real token ...
    tokens, mask = random_batch(1, 3, 12, pads=PADS)
    ours = forward(model, tokens, mask)
    assert_rel_close(ours, hf_logits(hf, tokens, mask), rel=1e-5, where=mask)
    # ... and equal to each row run alone without its padding.
    for b, n in enumerate(PADS):
        alone = forward(model, tokens[b : b + 1, n:], mask[b : b + 1, n:])
        assert_rel_close(ours[b : b + 1, n:], alone, rel=1e-5)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_kv_cache_decode_equals_full_forward_at_every_step(arch):
    model = load_pretrained(hf_checkpoint(arch)[0])
    tokens, mask = random_batch(2, 3, 14, pads=[0, 2, 5])
    full = forward(model, tokens, mask)
    positions = positions_from_mask(jnp.asarray(mask))
    graphdef, params = nnx.split(model)

    @jax.jit
    def decode(params, tokens, positions, mask, cache):
        return nnx.merge(graphdef, params).decode(
            tokens, positions_BxT=positions, attn_mask_BxT=mask, cache=cache
        )

    prompt = 8  # prefill 8 tokens (incl. the pads), then one token per step
    cache = model.init_cache(3, 14)
    logits, cache = decode(
        params, tokens[:, :prompt], positions[:, :prompt], mask[:, :prompt], cache
    )
    assert_rel_close(logits, full[:, :prompt], rel=1e-5, where=mask[:, :prompt])
    for t in range(prompt, 14):
        sl = slice(t, t + 1)
        logits, cache = decode(params, tokens[:, sl], positions[:, sl], mask[:, sl], cache)
        assert_rel_close(logits[:, 0], full[:, t], rel=1e-5)
    assert int(cache.end) == 14


def test_tied_and_untied_heads():
    untied = load_pretrained(hf_checkpoint("llama")[0])
    tied = load_pretrained(hf_checkpoint("llama3_tied")[0])
    assert untied.lm_head is not None and tied.lm_head is None
    h = np.random.default_rng(0).normal(size=(1, 1, 64)).astype(np.float32)
    expected = h[0, 0].astype(np.float64) @ np.asarray(tied.trunk.embed[...], np.float64).T
    assert_rel_close(np.asarray(tied.logits(jnp.asarray(h)))[0, 0], expected, rel=1e-6)


def test_llama3_rope_scaling_changes_only_low_frequencies():
    base = from_hf_dict(ARCHS["llama3_tied"]().to_dict())
    scaled, plain = base.rope_inv_freq, base.replace(rope_scaling=None).rope_inv_freq
    wavelen = 2 * np.pi / plain
    # orig_len 64: wavelengths < 64/4 untouched, > 64/1 divided by the factor, between: blended.
    high, low = wavelen < 16, wavelen > 64
    np.testing.assert_array_equal(scaled[high], plain[high])
    np.testing.assert_allclose(scaled[low], plain[low] / 8.0, rtol=1e-6)
    mid = ~high & ~low
    assert mid.any()
    assert np.all((scaled[mid] < plain[mid]) & (scaled[mid] > plain[mid] / 8.0))


def test_params_carry_logical_axis_names():
    cfg = from_hf_dict(ARCHS["qwen2"]().to_dict())
    abstract = nnx.eval_shape(lambda: CausalLM(cfg, rngs=nnx.Rngs(0)))
    for path, var in nnx.to_flat_state(nnx.state(abstract, nnx.Param)):
        names = var.get_metadata()["out_sharding"]
        assert len(names) == len(var.shape), path
        assert set(names) <= set(models.LOGICAL_AXES), path
    state = nnx.state(abstract, nnx.Param)
    # flax leaves names without a rule untouched, so every logical name gets one.
    rules = dict.fromkeys(models.LOGICAL_AXES) | {
        "embed": "fsdp",
        "heads": "tensor",
        "mlp": "tensor",
    }
    with nn.logical_axis_rules(list(rules.items())):
        specs = nnx.get_partition_spec(state)
    assert specs["trunk"]["layers"]["attn"]["q"]["kernel"].get_value() == PartitionSpec(
        None, "fsdp", "tensor", None
    )
    assert specs["trunk"]["layers"]["mlp"]["down"]["kernel"].get_value() == PartitionSpec(
        None, "tensor", "fsdp"
    )


def test_compute_and_param_dtypes():
    directory, _ = hf_checkpoint("llama")
    tokens, mask = random_batch(3, 2, 10, pads=[0, 4])
    f32 = forward(load_pretrained(directory), tokens, mask)

    mixed = load_pretrained(directory, dtype="bfloat16")
    params = jax.tree.leaves(nnx.state(mixed, nnx.Param))
    assert all(p.dtype == jnp.float32 for p in params)
    logits = forward(mixed, tokens, mask)
    assert logits.dtype == np.float32
    # bf16 keeps ~3 significant digits; two layers of rounding stay within a few percent.
    assert_rel_close(logits, f32, rel=3e-2, where=mask)

    bf16 = load_pretrained(directory, dtype="bfloat16", param_dtype="bfloat16")
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(nnx.state(bf16, nnx.Param)))
    assert_rel_close(forward(bf16, tokens, mask), f32, rel=3e-2, where=mask)


def test_learned_positions_reject_too_long_sequences():
    model = load_pretrained(hf_checkpoint("gpt2")[0])  # n_positions = 64
    tokens, mask = random_batch(0, 1, 65)
    with pytest.raises(ValueError, match="max_position_embeddings 64"):
        model(jnp.asarray(tokens), positions_BxT=jnp.asarray(mask) * 0, attn_mask_BxT=mask)


def test_mismatched_mask_shape_is_rejected():
    model = load_pretrained(hf_checkpoint("llama")[0])
    tokens, mask = random_batch(0, 2, 5)
    with pytest.raises(ValueError, match="attn_mask_BxT has shape"):
        model(jnp.asarray(tokens), positions_BxT=jnp.zeros((2, 5), int), attn_mask_BxT=mask[:, 1:])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "bert"}, "model_type 'bert' is not supported"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 2.0}}, "rope type 'yarn'"),
        ({"hidden_act": "tanh"}, "hidden_act='tanh' is not supported"),
        ({"num_attention_heads": None}, "'num_attention_heads' is missing"),
    ],
)
def test_bad_config_names_the_field(change, message):
    raw = ARCHS["llama"]().to_dict() | change
    with pytest.raises(ValueError, match=message):
        from_hf_dict(raw)


def test_sliding_window_fields_are_read_or_refused_by_name():
    qwen3 = ARCHS["qwen3"]().to_dict()
    cfg = from_hf_dict(qwen3)
    assert cfg.qk_norm and cfg.head_dim == 24 and cfg.layer_windows == (0, 4)
    # without use_sliding_window HF applies no window, whatever the other fields say
    assert from_hf_dict(qwen3 | {"use_sliding_window": False}).layer_windows == (0, 0)
    # HF derives layer_types from max_window_layers when a config has none
    derived = {k: v for k, v in qwen3.items() if k != "layer_types"} | {"max_window_layers": 0}
    assert from_hf_dict(derived).layer_windows == (4, 4)
    with pytest.raises(ValueError, match=r"layer_types=.*expected 2 entries"):
        from_hf_dict(qwen3 | {"layer_types": ["sliding_attention"]})
    with pytest.raises(ValueError, match=r"layer_types=.*chunked_attention"):
        from_hf_dict(qwen3 | {"layer_types": ["full_attention", "chunked_attention"]})
    mistral = ARCHS["mistral"]().to_dict()
    assert from_hf_dict(mistral).layer_windows == (5, 5)
    assert from_hf_dict(mistral | {"sliding_window": None}).layer_windows == (0, 0)
    with pytest.raises(ValueError, match="mistral with layer_types"):
        from_hf_dict(mistral | {"layer_types": ["full_attention"] * 2})
    with pytest.raises(ValueError, match="mistral with attention_bias"):
        from_hf_dict(mistral | {"attention_bias": True})
    with pytest.raises(ValueError, match="llama with sliding-window layers"):
        from_hf_dict(ARCHS["llama"]().to_dict() | {"sliding_window": 8})
    with pytest.raises(ValueError, match="sliding_attention layers but sliding_window=0"):
        cfg.replace(sliding_window=0)
    with pytest.raises(ValueError, match="layer_types has 1 entries for 2 layers"):
        cfg.replace(layer_types=("full_attention",))


def test_gemma3_fields_are_read_or_refused_by_name():
    gemma = ARCHS["gemma3"]().to_dict()
    cfg = from_hf_dict(gemma)
    assert cfg.layer_windows == (4, 0, 4) and cfg.local_rope_theta == 1e4
    assert cfg.rope_theta == 1e6 and cfg.rope_scaling.factor == 2.0
    assert cfg.attn_scale == 24**-0.5 and cfg.final_softcap == 3.0 and cfg.norm == "rms_offset"
    # transformers 4's layout: one theta per kind of layer, the scaling for the global ones
    full = gemma["rope_parameters"]["full_attention"]
    old = {k: v for k, v in gemma.items() if k != "rope_parameters"} | {
        "rope_theta": 1e6, "rope_local_base_freq": 1e4,
        "rope_scaling": {"rope_type": "linear", "factor": full["factor"]},
    }  # fmt: skip
    assert from_hf_dict(old) == cfg
    # HF's default pattern when layer_types is absent: every sixth layer global
    six = {k: v for k, v in gemma.items() if k != "layer_types"} | {"num_hidden_layers": 7}
    assert from_hf_dict(six).layer_windows == (4, 4, 4, 4, 4, 0, 4)
    for field, value in [("attn_logit_softcapping", 50.0), ("use_bidirectional_attention", True)]:
        with pytest.raises(ValueError, match=f"gemma3_text with {field}="):
            from_hf_dict(gemma | {field: value})
    local = {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}
    with pytest.raises(ValueError, match="gemma3 sliding layers with rope type 'linear'"):
        from_hf_dict(
            gemma | {"rope_parameters": {"full_attention": full, "sliding_attention": local}}
        )
    with pytest.raises(ValueError, match="model_type 'gemma3' is not supported"):
        from_hf_dict(gemma | {"model_type": "gemma3"})  # the multimodal wrapper


def test_every_config_key_is_read_neutral_refused_or_reported():
    for arch in ARCHS:  # what transformers writes for each family: nothing unaccounted for
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            from_hf_dict(ARCHS[arch]().to_dict())
    raw = ARCHS["llama"]().to_dict()
    with pytest.warns(UserWarning, match=r"llama config keys not read: \['my_gate'\]"):
        from_hf_dict(raw | {"my_gate": 2})
    for key, value in [("num_local_experts", 8), ("use_mrope", True),
                       ("final_logit_softcapping", 30.0)]:  # fmt: skip
        with pytest.raises(ValueError, match=f"llama with {key}={value!r} is not supported"):
            from_hf_dict(raw | {key: value})
    from_hf_dict(raw | {"use_mrope": False, "final_logit_softcapping": None})  # neutral values


def test_older_config_layouts_parse_like_current_ones():
    neox = ARCHS["gpt_neox"]().to_dict()
    old_neox = {k: v for k, v in neox.items() if k != "rope_parameters"}
    old_neox |= {"rotary_pct": 0.5, "rotary_emb_base": 10000}
    assert from_hf_dict(old_neox) == from_hf_dict(neox)

    llama3 = ARCHS["llama3_tied"]().to_dict()
    rope = dict(llama3.pop("rope_parameters"))
    old_llama3 = llama3 | {"rope_theta": rope.pop("rope_theta"), "rope_scaling": rope}
    assert from_hf_dict(old_llama3) == from_hf_dict(ARCHS["llama3_tied"]().to_dict())


@pytest.mark.parametrize("arch", list(ARCHS))
def test_exported_config_parses_back_in_either_layout(arch):
    cfg = from_hf_dict(ARCHS[arch]().to_dict())
    exported = to_hf_dict(cfg, architecture="X")
    assert from_hf_dict(exported) == cfg
    # A transformers-4 reader ignores `rope_parameters`; the legacy keys must say the same.
    legacy = {k: v for k, v in exported.items() if k != "rope_parameters"}
    assert from_hf_dict(legacy) == cfg
