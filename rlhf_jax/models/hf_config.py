"""HF config.json ⇄ `ModelConfig`.

`from_hf_dict` accepts both the transformers-5 layout (`rope_parameters`) and the older one
(`rope_theta`/`rope_scaling`, NeoX `rotary_pct`/`rotary_emb_base`), since checkpoints on the hub
were written by many versions; every key it does not read is accounted for by `hf_keys`.
The way back, `to_hf_dict`, is `hf_export.py`.
"""

from __future__ import annotations

from typing import Any

from rlhf_jax.models.config import (
    LAYER_TYPES,
    SUPPORTED_MODEL_TYPES,
    ModelConfig,
    RopeScaling,
)
from rlhf_jax.models.hf_keys import check_keys

# HF activation names → ours. "gelu_tanh" is GPT-2's tanh approximation of GELU.
_ACTIVATIONS = {
    "silu": "silu",
    "swish": "silu",
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu",
}


def _require(d: dict, key: str, source: str) -> Any:
    if key not in d or d[key] is None:
        raise ValueError(f"{source}: required field {key!r} is missing")
    return d[key]


def _eos_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def _activation(name: str, source: str, field: str) -> str:
    if name not in _ACTIVATIONS:
        raise ValueError(
            f"{source}: {field}={name!r} is not supported; expected one of {sorted(_ACTIVATIONS)}"
        )
    return _ACTIVATIONS[name]


def _rope(d: dict, source: str) -> tuple[float, float, RopeScaling | None]:
    """(theta, partial_rotary_factor, scaling) from either config layout."""
    params = dict(d.get("rope_parameters") or {})
    old_scaling = d.get("rope_scaling") or {}
    params = {**old_scaling, **params}
    theta = params.get("rope_theta", d.get("rope_theta", d.get("rotary_emb_base", 10000.0)))
    partial = params.get("partial_rotary_factor", d.get("partial_rotary_factor"))
    if partial is None:
        partial = d.get("rotary_pct", 1.0)
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        scaling = None
    elif kind == "linear":
        scaling = RopeScaling(kind="linear", factor=float(_require(params, "factor", source)))
    elif kind == "llama3":
        scaling = RopeScaling(
            kind="llama3",
            factor=float(_require(params, "factor", source)),
            low_freq_factor=float(_require(params, "low_freq_factor", source)),
            high_freq_factor=float(_require(params, "high_freq_factor", source)),
            original_max_position_embeddings=int(
                params.get("original_max_position_embeddings", d["max_position_embeddings"])
            ),
        )
    else:
        raise ValueError(
            f"{source}: rope type {kind!r} is not supported; expected 'default', 'linear' "
            "or 'llama3'"
        )
    return float(theta), float(partial), scaling


def _gemma_rope(d: dict, source: str) -> tuple[float, float, RopeScaling | None, float]:
    """Gemma 3's two RoPEs: (theta, partial, scaling) of the full-attention layers and the
    sliding layers' theta, from `rope_parameters` per layer type or the older
    `rope_theta` / `rope_local_base_freq` / `rope_scaling`."""
    params = d.get("rope_parameters") or {}
    full = dict(params.get("full_attention") or {})
    local = dict(params.get("sliding_attention") or {})
    full = {**(d.get("rope_scaling") or {}), **full}
    full.setdefault("rope_theta", d.get("rope_theta", 1_000_000.0))
    local.setdefault("rope_theta", d.get("rope_local_base_freq", 10_000.0))
    if local.get("rope_type", local.get("type", "default")) != "default":
        raise ValueError(
            f"{source}: gemma3 sliding layers with rope type "
            f"{local.get('rope_type', local.get('type'))!r} are not supported; expected 'default'"
        )
    spec = {"rope_parameters": full, "max_position_embeddings": d.get("max_position_embeddings")}
    theta, partial, scaling = _rope(spec, source)
    return theta, partial, scaling, float(local["rope_theta"])


def _windows(d: dict, model_type: str, num_layers: int, source: str) -> dict[str, Any]:
    """sliding_window and layer_types as HF's Llama-family configs mean them."""
    if model_type == "llama":
        if d.get("sliding_window") or "sliding_attention" in (d.get("layer_types") or ()):
            raise ValueError(f"{source}: llama with sliding-window layers is not supported")
        return {}
    if model_type == "gemma3_text":
        # HF's default when a config has no layer_types: every sixth layer global
        pattern = int(d.get("sliding_window_pattern", 6))
        types = d.get("layer_types") or [
            "sliding_attention" if (i + 1) % pattern else "full_attention"
            for i in range(num_layers)
        ]
        window = d.get("sliding_window")
        if not window:
            return {}
    elif model_type == "mistral":
        if d.get("layer_types"):  # HF's Mistral reads no layer_types (Ministral does)
            raise ValueError(
                f"{source}: mistral with layer_types={d['layer_types']!r} is not supported"
            )
        window = d.get("sliding_window")
        return {"sliding_window": int(window or 0)}
    else:
        # Qwen2/Qwen3: the window applies only with use_sliding_window, on the layers that
        # layer_types marks (by default those from max_window_layers on).
        window = d.get("sliding_window") if d.get("use_sliding_window") else None
        if not window:
            return {}
        types = d.get("layer_types")
        if types is None:
            start = int(d.get("max_window_layers", num_layers))
            types = [
                "sliding_attention" if i >= start else "full_attention" for i in range(num_layers)
            ]
    types = tuple(types)
    if len(types) != num_layers or set(types) - set(LAYER_TYPES):
        raise ValueError(
            f"{source}: layer_types={list(types)!r}: expected {num_layers} entries of {LAYER_TYPES}"
        )
    return {"sliding_window": int(window), "layer_types": types}


def from_hf_dict(d: dict, *, source: str = "config.json", **overrides: Any) -> ModelConfig:
    """Builds a `ModelConfig` from a parsed HF config.json; `overrides` replace fields after.

    Raises ValueError naming the field for unknown `model_type` or unsupported options.
    """
    model_type = d.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{source}: model_type {model_type!r} is not supported; "
            f"expected one of {SUPPORTED_MODEL_TYPES}"
        )
    check_keys(d, model_type, source)
    common = dict(
        model_type=model_type,
        init_std=float(d.get("initializer_range", 0.02)),
        bos_token_id=d.get("bos_token_id"),
        eos_token_ids=_eos_ids(d.get("eos_token_id")),
        pad_token_id=d.get("pad_token_id"),
    )
    if model_type == "gpt2":
        for field, ok in [
            ("scale_attn_by_inverse_layer_idx", False),
            ("scale_attn_weights", True),
            ("add_cross_attention", False),
        ]:
            if d.get(field, ok) != ok:
                raise ValueError(f"{source}: gpt2 with {field}={d[field]!r} is not supported")
        width = _require(d, "n_embd", source)
        heads = _require(d, "n_head", source)
        cfg = ModelConfig(
            vocab_size=_require(d, "vocab_size", source),
            hidden_size=width,
            num_layers=_require(d, "n_layer", source),
            num_heads=heads,
            num_kv_heads=heads,
            head_dim=width // heads,
            mlp_dim=d.get("n_inner") or 4 * width,
            norm="layer",
            norm_eps=float(d.get("layer_norm_epsilon", 1e-5)),
            activation=_activation(d.get("activation_function", "gelu_new"), source, "activation"),
            gated_mlp=False,
            positions="learned",
            max_position_embeddings=_require(d, "n_positions", source),
            qkv_bias=True,
            out_bias=True,
            mlp_bias=True,
            tie_embeddings=bool(d.get("tie_word_embeddings", True)),
            **common,
        )
        return cfg.replace(**overrides)

    width = _require(d, "hidden_size", source)
    heads = _require(d, "num_attention_heads", source)
    head_dim = d.get("head_dim") or width // heads
    if model_type == "gemma3_text":
        theta, partial, scaling, local_theta = _gemma_rope(d, source)
    else:
        (theta, partial, scaling), local_theta = _rope(d, source), 0.0
    if model_type == "gpt_neox":
        bias = bool(d.get("attention_bias", True))
        arch = dict(
            num_kv_heads=heads,
            norm="layer",
            norm_eps=float(d.get("layer_norm_eps", 1e-5)),
            activation=_activation(d.get("hidden_act", "gelu"), source, "hidden_act"),
            gated_mlp=False,
            qkv_bias=bias,
            out_bias=bias,
            mlp_bias=True,
            parallel_residual=bool(d.get("use_parallel_residual", True)),
            tie_embeddings=bool(d.get("tie_word_embeddings", False)),
        )
    else:  # llama, qwen2, qwen3, mistral
        attention_bias = bool(d.get("attention_bias", False))
        if model_type == "mistral" and (attention_bias or d.get("mlp_bias")):
            raise ValueError(f"{source}: mistral with attention_bias or mlp_bias is not supported")
        arch = dict(
            num_kv_heads=d.get("num_key_value_heads") or heads,
            norm="rms",
            norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            activation=_activation(d.get("hidden_act", "silu"), source, "hidden_act"),
            gated_mlp=True,
            qkv_bias=model_type == "qwen2" or attention_bias,
            out_bias=attention_bias,
            mlp_bias=bool(d.get("mlp_bias", False)),
            qk_norm=model_type == "qwen3",
            tie_embeddings=bool(d.get("tie_word_embeddings", False)),
            **_windows(d, model_type, _require(d, "num_hidden_layers", source), source),
        )
        if model_type == "gemma3_text":
            for field in ("use_bidirectional_attention", "attn_logit_softcapping"):
                # transformers' Gemma 3 reads attn_logit_softcapping but never applies it
                if d.get(field):
                    raise ValueError(
                        f"{source}: gemma3_text with {field}={d[field]!r} is not supported"
                    )
            arch.update(
                norm="rms_offset",
                activation=_activation(
                    d.get("hidden_activation", "gelu_pytorch_tanh"), source, "hidden_activation"
                ),
                qkv_bias=attention_bias,
                qk_norm=True,
                post_norms=True,
                embed_scale=True,
                attn_scale=float(d.get("query_pre_attn_scalar", head_dim)) ** -0.5,
                final_softcap=float(d.get("final_logit_softcapping") or 0.0),
                local_rope_theta=(
                    local_theta if "sliding_attention" in arch.get("layer_types", ()) else 0.0
                ),
                tie_embeddings=bool(d.get("tie_word_embeddings", True)),
            )
    cfg = ModelConfig(
        vocab_size=_require(d, "vocab_size", source),
        hidden_size=width,
        num_layers=_require(d, "num_hidden_layers", source),
        num_heads=heads,
        head_dim=head_dim,
        mlp_dim=_require(d, "intermediate_size", source),
        positions="rope",
        max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
        rope_theta=theta,
        # int() truncation as in HF, so e.g. Pythia's 0.25 × 64 and odd products agree.
        rotary_dim=int(head_dim * partial),
        rope_scaling=scaling,
        **arch,
        **common,
    )
    return cfg.replace(**overrides)
