"""The tensor rules between HF checkpoints and our parameters (`hf_io` loads and saves by them).

Each HF tensor is described once by a `Rule`: its name, its shape, the parameters of ours it
holds, and the two reshapes between them, so import and export cannot drift apart. HF linear
weights are (out, in); GPT-2's Conv1D weights are (in, out); GPT-2 fuses q|k|v along the output
and GPT-NeoX interleaves them per head, (H, 3, K) along the output.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from rlhf_jax.models.config import LLAMA_LIKE, ModelConfig

_PREFIX = {"gpt2": "transformer.", "gpt_neox": "gpt_neox."}  # the Llama-like: "model."

ParamPath = tuple  # a parameter path as nnx.to_flat_state gives it, e.g. ("trunk", "embed")
# Rules name layer i's parameters per layer, ("trunk", "layers", i, "attn", "q", "kernel"), as the
# checkpoint does; the model holds them stacked, ("trunk", "layers", "attn", "q", "kernel") with
# layer i at index i of the leading axis. `hf_io._layer_paths` maps one onto the other.


@dataclasses.dataclass(frozen=True)
class Rule:
    hf_name: str
    hf_shape: tuple[int, ...]
    ours: tuple[ParamPath, ...]
    to_ours: Callable[[np.ndarray], tuple[np.ndarray, ...]]
    to_hf: Callable[..., np.ndarray]


def _copy(hf_name, hf_shape, ours, our_shape):
    return Rule(
        hf_name, tuple(hf_shape), (ours,),
        lambda a: (a.reshape(our_shape),), lambda a: a.reshape(hf_shape),
    )  # fmt: skip


def _linear(hf_name, ours, in_shape, out_shape):
    """An HF nn.Linear weight (out, in) ↔ our kernel (*in_shape, *out_shape)."""
    n_in, n_out = int(np.prod(in_shape)), int(np.prod(out_shape))
    return Rule(
        hf_name, (n_out, n_in), (ours,),
        lambda a: (a.T.reshape(*in_shape, *out_shape),),
        lambda k: k.reshape(n_in, n_out).T,
    )  # fmt: skip


def _conv1d(hf_name, ours, in_shape, out_shape):
    """A GPT-2 Conv1D weight (in, out) ↔ our kernel (*in_shape, *out_shape)."""
    n_in, n_out = int(np.prod(in_shape)), int(np.prod(out_shape))
    return _copy(hf_name, (n_in, n_out), ours, (*in_shape, *out_shape))


def trunk_rules(cfg: ModelConfig) -> list[Rule]:
    d, h, kv, k, f, v = (
        cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
    )  # fmt: skip
    pre = _PREFIX.get(cfg.model_type, "model.")
    t = ("trunk",)
    rules = [_copy(f"{pre}embed_tokens.weight", (v, d), (*t, "embed"), (v, d))]

    def norm(hf, ours):
        out = [_copy(f"{hf}.weight", (d,), (*ours, "scale"), (d,))]
        if cfg.norm == "layer":
            out.append(_copy(f"{hf}.bias", (d,), (*ours, "bias"), (d,)))
        return out

    def bias(hf, ours, shape, enabled):
        return [_copy(hf, (int(np.prod(shape)),), ours, shape)] if enabled else []

    if cfg.model_type in LLAMA_LIKE:
        for i in range(cfg.num_layers):
            hp, op = f"{pre}layers.{i}.", (*t, "layers", i)
            a, m = f"{hp}self_attn.", (*op, "attn")
            for name, n in (("q", h), ("k", kv), ("v", kv)):
                rules.append(_linear(f"{a}{name}_proj.weight", (*m, name, "kernel"), (d,), (n, k)))
                rules += bias(f"{a}{name}_proj.bias", (*m, name, "bias"), (n, k), cfg.qkv_bias)
            rules.append(_linear(f"{a}o_proj.weight", (*m, "o", "kernel"), (h, k), (d,)))
            rules += bias(f"{a}o_proj.bias", (*m, "o", "bias"), (d,), cfg.out_bias)
            if cfg.qk_norm:
                for name in ("q_norm", "k_norm"):
                    rules.append(_copy(f"{a}{name}.weight", (k,), (*m, name, "scale"), (k,)))
            for name, (i_, o_) in (("gate", (d, f)), ("up", (d, f)), ("down", (f, d))):
                hf = f"{hp}mlp.{name}_proj"
                rules.append(_linear(f"{hf}.weight", (*op, "mlp", name, "kernel"), (i_,), (o_,)))
                rules += bias(f"{hf}.bias", (*op, "mlp", name, "bias"), (o_,), cfg.mlp_bias)
            rules += norm(f"{hp}input_layernorm", (*op, "attn_norm"))
            if cfg.post_norms:  # Gemma 3's four norms
                rules += norm(f"{hp}post_attention_layernorm", (*op, "attn_post_norm"))
                rules += norm(f"{hp}pre_feedforward_layernorm", (*op, "mlp_norm"))
                rules += norm(f"{hp}post_feedforward_layernorm", (*op, "mlp_post_norm"))
            else:
                rules += norm(f"{hp}post_attention_layernorm", (*op, "mlp_norm"))
        rules += norm(f"{pre}norm", (*t, "final_norm"))
    elif cfg.model_type == "gpt2":
        rules = [
            _copy(f"{pre}wte.weight", (v, d), (*t, "embed"), (v, d)),
            _copy(f"{pre}wpe.weight", (cfg.max_position_embeddings, d), (*t, "pos_embed"),
                  (cfg.max_position_embeddings, d)),
        ]  # fmt: skip
        for i in range(cfg.num_layers):
            hp, op = f"{pre}h.{i}.", (*t, "layers", i)
            m = (*op, "attn")
            qkv = tuple((*m, name, "kernel") for name in "qkv")
            qkv_b = tuple((*m, name, "bias") for name in "qkv")
            rules += [
                Rule(f"{hp}attn.c_attn.weight", (d, 3 * h * k), qkv,
                      lambda a: tuple(x.reshape(d, h, k) for x in np.split(a, 3, axis=1)),
                      lambda *ks: np.concatenate([x.reshape(d, h * k) for x in ks], axis=1)),
                Rule(f"{hp}attn.c_attn.bias", (3 * h * k,), qkv_b,
                      lambda a: tuple(x.reshape(h, k) for x in np.split(a, 3)),
                      lambda *bs: np.concatenate([x.reshape(-1) for x in bs])),
                _conv1d(f"{hp}attn.c_proj.weight", (*m, "o", "kernel"), (h, k), (d,)),
                _copy(f"{hp}attn.c_proj.bias", (d,), (*m, "o", "bias"), (d,)),
                _conv1d(f"{hp}mlp.c_fc.weight", (*op, "mlp", "fc", "kernel"), (d,), (f,)),
                _copy(f"{hp}mlp.c_fc.bias", (f,), (*op, "mlp", "fc", "bias"), (f,)),
                _conv1d(f"{hp}mlp.c_proj.weight", (*op, "mlp", "proj", "kernel"), (f,), (d,)),
                _copy(f"{hp}mlp.c_proj.bias", (d,), (*op, "mlp", "proj", "bias"), (d,)),
            ]  # fmt: skip
            rules += norm(f"{hp}ln_1", (*op, "attn_norm")) + norm(f"{hp}ln_2", (*op, "mlp_norm"))
        rules += norm(f"{pre}ln_f", (*t, "final_norm"))
    elif cfg.model_type == "gpt_neox":
        rules = [_copy(f"{pre}embed_in.weight", (v, d), (*t, "embed"), (v, d))]
        for i in range(cfg.num_layers):
            hp, op = f"{pre}layers.{i}.", (*t, "layers", i)
            m = (*op, "attn")
            qkv = tuple((*m, name, "kernel") for name in "qkv")
            rules.append(Rule(
                f"{hp}attention.query_key_value.weight", (3 * h * k, d), qkv,
                lambda a: tuple(a.reshape(h, 3, k, d)[:, j].transpose(2, 0, 1) for j in range(3)),
                lambda *ks: np.stack([x.transpose(1, 2, 0) for x in ks], axis=1).reshape(-1, d),
            ))  # fmt: skip
            if cfg.qkv_bias:
                rules.append(Rule(
                    f"{hp}attention.query_key_value.bias", (3 * h * k,),
                    tuple((*m, name, "bias") for name in "qkv"),
                    lambda a: tuple(a.reshape(h, 3, k)[:, j] for j in range(3)),
                    lambda *bs: np.stack(bs, axis=1).reshape(-1),
                ))  # fmt: skip
            rules.append(_linear(f"{hp}attention.dense.weight", (*m, "o", "kernel"), (h, k), (d,)))
            rules += bias(f"{hp}attention.dense.bias", (*m, "o", "bias"), (d,), cfg.out_bias)
            for hf, ours, i_, o_ in (
                ("dense_h_to_4h", "fc", d, f),
                ("dense_4h_to_h", "proj", f, d),
            ):
                p = (*op, "mlp", ours)
                rules.append(_linear(f"{hp}mlp.{hf}.weight", (*p, "kernel"), (i_,), (o_,)))
                rules += bias(f"{hp}mlp.{hf}.bias", (*p, "bias"), (o_,), cfg.mlp_bias)
            rules += norm(f"{hp}input_layernorm", (*op, "attn_norm"))
            rules += norm(f"{hp}post_attention_layernorm", (*op, "mlp_norm"))
        rules += norm(f"{pre}final_layer_norm", (*t, "final_norm"))
    return rules


def lm_head_rule(cfg: ModelConfig) -> list[Rule]:
    if cfg.tie_embeddings:
        return []
    name = "embed_out.weight" if cfg.model_type == "gpt_neox" else "lm_head.weight"
    return [_linear(name, ("lm_head", "kernel"), (cfg.hidden_size,), (cfg.vocab_size,))]


def score_rule(cfg: ModelConfig) -> Rule:
    d = cfg.hidden_size
    return _copy("score.weight", (1, d), ("head", "kernel"), (d,))
