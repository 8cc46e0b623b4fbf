"""`ModelConfig` → HF config.json: `to_hf_dict` writes the transformers-5 layout (with the older
keys beside it, for readers built on transformers 4); `hf_config.from_hf_dict` reads it back."""

from __future__ import annotations

import dataclasses
from typing import Any

from rlhf_jax.models.config import ModelConfig

_HF_ACT = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}


def _integral(x: float) -> int | float:
    """x as an int when it is one up to float rounding (HF types some such fields int)."""
    return round(x) if abs(x - round(x)) < 1e-6 * max(1.0, abs(x)) else x


def to_hf_dict(cfg: ModelConfig, *, architecture: str) -> dict:
    """An HF config.json (transformers-5 layout) describing `cfg`, for `architecture`."""
    ids = dict(
        bos_token_id=cfg.bos_token_id,
        eos_token_id=(
            None
            if not cfg.eos_token_ids
            else cfg.eos_token_ids[0]
            if len(cfg.eos_token_ids) == 1
            else list(cfg.eos_token_ids)
        ),
        pad_token_id=cfg.pad_token_id,
        tie_word_embeddings=cfg.tie_embeddings,
        initializer_range=cfg.init_std,
        dtype=cfg.param_dtype,
        torch_dtype=cfg.param_dtype,  # the transformers-4 name of `dtype`
    )
    head = dict(model_type=cfg.model_type, architectures=[architecture], vocab_size=cfg.vocab_size)
    if cfg.model_type == "gpt2":
        return dict(
            **head,
            n_embd=cfg.hidden_size,
            n_layer=cfg.num_layers,
            n_head=cfg.num_heads,
            n_inner=cfg.mlp_dim,
            n_positions=cfg.max_position_embeddings,
            activation_function=_HF_ACT[cfg.activation],
            layer_norm_epsilon=cfg.norm_eps,
            **ids,
        )
    rope: dict[str, Any] = {"rope_theta": cfg.rope_theta, "rope_type": "default"}
    partial = cfg.rotary_dim / cfg.head_dim
    if cfg.rotary_dim != cfg.head_dim:
        rope["partial_rotary_factor"] = partial
    scaling = None
    if cfg.rope_scaling is not None:
        scaling = dataclasses.asdict(cfg.rope_scaling)
        scaling["rope_type"] = scaling.pop("kind")
        if scaling["rope_type"] == "linear":  # the llama3 fields mean nothing to it
            scaling = {"rope_type": "linear", "factor": scaling["factor"]}
        rope.update(scaling)
    # Readers built on transformers 4 (many serving stacks) know only the older keys; they are
    # written beside `rope_parameters`, which transformers 5 reads first.
    legacy: dict[str, Any] = {"rope_theta": cfg.rope_theta, "rope_scaling": scaling}
    if cfg.model_type == "gpt_neox":
        legacy.update(rotary_pct=partial, rotary_emb_base=cfg.rope_theta)
    common = dict(
        **head,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.mlp_dim,
        hidden_act=_HF_ACT[cfg.activation],
        max_position_embeddings=cfg.max_position_embeddings,
        rope_parameters=rope,
        **legacy,
        **ids,
    )
    if cfg.model_type == "gpt_neox":
        if cfg.qkv_bias != cfg.out_bias or not cfg.mlp_bias:
            raise ValueError("gpt_neox export needs qkv_bias == out_bias and mlp_bias=True")
        return dict(
            **common,
            layer_norm_eps=cfg.norm_eps,
            use_parallel_residual=cfg.parallel_residual,
            attention_bias=cfg.qkv_bias,
        )
    out = dict(
        **common,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        rms_norm_eps=cfg.norm_eps,
    )
    windows = cfg.layer_windows
    if cfg.model_type == "gemma3_text":
        full = dict(rope)
        out.pop("rope_theta", None)
        out.pop("rope_scaling", None)
        out.pop("hidden_act")
        out.update(
            # Gemma's name for the tanh GELU, which HF computes with torch's own kernel
            hidden_activation="gelu_pytorch_tanh"
            if cfg.activation == "gelu_tanh"
            else _HF_ACT[cfg.activation],
            rope_parameters={
                "full_attention": full,
                "sliding_attention": {
                    "rope_type": "default",
                    "rope_theta": cfg.local_rope_theta or cfg.rope_theta,
                },
            },
            # the transformers-4 keys
            rope_theta=cfg.rope_theta,
            rope_local_base_freq=cfg.local_rope_theta or cfg.rope_theta,
            rope_scaling=scaling,
            attention_bias=cfg.qkv_bias,
            query_pre_attn_scalar=_integral(cfg.scores_scale**-2),
            final_logit_softcapping=cfg.final_softcap or None,
            sliding_window=cfg.sliding_window or None,
            layer_types=["sliding_attention" if w else "full_attention" for w in windows],
        )
        return out
    if cfg.model_type in ("llama", "qwen3"):
        if cfg.qkv_bias != cfg.out_bias:
            raise ValueError(
                f"{cfg.model_type} export needs qkv_bias == out_bias (HF `attention_bias`)"
            )
        out.update(attention_bias=cfg.qkv_bias)
    if cfg.model_type == "llama":
        if any(windows):
            raise ValueError("llama export has no sliding-window layers")
        out.update(mlp_bias=cfg.mlp_bias)
    elif cfg.model_type == "mistral":
        if len(set(windows)) > 1:
            raise ValueError("mistral export needs one attention window for every layer")
        out.update(sliding_window=windows[0] or None)
    else:  # qwen2, qwen3
        types = ["sliding_attention" if w else "full_attention" for w in windows]
        out.update(
            use_sliding_window=any(windows),
            sliding_window=cfg.sliding_window or None,
            max_window_layers=types.index("sliding_attention") if any(windows) else cfg.num_layers,
            layer_types=types,
        )
    return out
