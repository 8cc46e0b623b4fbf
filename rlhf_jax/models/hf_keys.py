"""Every config.json key accounted for: read by the family's parser (`hf_config`), known to
change nothing we compute, refused by name and value, or named in a warning."""

from __future__ import annotations

import warnings

# config.json keys that change nothing we compute: metadata, the generic PretrainedConfig
# fields, training-time dropout (no phase applies dropout), GPT-2's double-heads summary head,
# and options equal in effect to ours (Llama's pretraining_tp splits the same matmuls; GPT-2's
# reorder_and_upcast_attn upcasts scores we already take in float32).
_NEUTRAL_KEYS = frozenset({
    "_name_or_path", "architectures", "auto_map", "chunk_size_feed_forward", "dtype",
    "id2label", "is_decoder", "is_encoder_decoder", "label2id", "model_type", "num_labels",
    "output_attentions", "output_hidden_states", "problem_type", "return_dict",
    "tokenizer_class", "torch_dtype", "transformers_version", "use_cache", "cache_implementation",
    "task_specific_params",
    "bos_token_id", "eos_token_id", "pad_token_id", "initializer_range", "tie_word_embeddings",
    "attention_dropout", "attn_pdrop", "classifier_dropout", "embd_pdrop", "hidden_dropout",
    "resid_pdrop", "summary_activation", "summary_first_dropout", "summary_proj_to_labels",
    "summary_type", "summary_use_proj", "pretraining_tp", "reorder_and_upcast_attn",
    "rope_parameters", "rope_scaling", "rope_theta", "partial_rotary_factor", "vocab_size",
})  # fmt: skip
_LLAMA_KEYS = frozenset({
    "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "head_dim", "intermediate_size", "hidden_act", "rms_norm_eps", "max_position_embeddings",
    "attention_bias", "mlp_bias",
})  # fmt: skip
_READ_KEYS = {  # what from_hf_dict reads, per family
    "llama": _LLAMA_KEYS | {"sliding_window", "layer_types"},  # read to refuse a window
    "qwen2": _LLAMA_KEYS
    | {"use_sliding_window", "sliding_window", "max_window_layers", "layer_types"},
    "qwen3": _LLAMA_KEYS
    | {"use_sliding_window", "sliding_window", "max_window_layers", "layer_types"},
    "mistral": _LLAMA_KEYS | {"sliding_window", "layer_types"},
    "gemma3_text": (_LLAMA_KEYS - {"hidden_act"})
    | {
        "hidden_activation",
        "sliding_window",
        "layer_types",
        "sliding_window_pattern",
        "_sliding_window_pattern",
        "query_pre_attn_scalar",
        "final_logit_softcapping",
        "attn_logit_softcapping",
        "use_bidirectional_attention",
        "rope_local_base_freq",
    },
    "gpt2": frozenset(
        {
            "n_embd",
            "n_layer",
            "n_head",
            "n_inner",
            "n_positions",
            "n_ctx",
            "activation_function",
            "layer_norm_epsilon",
            "scale_attn_by_inverse_layer_idx",
            "scale_attn_weights",
            "add_cross_attention",
        }
    ),
    "gpt_neox": frozenset(
        {
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "hidden_act",
            "layer_norm_eps",
            "max_position_embeddings",
            "attention_bias",
            "use_parallel_residual",
            "rotary_pct",
            "rotary_emb_base",
        }
    ),
}
# Keys of architectures we do not implement, refused when set to anything but their neutral
# value: mixture-of-experts layers, multimodal RoPE, soft-capping outside Gemma 3.
_REFUSED_KEYS = (
    "num_experts", "num_local_experts", "n_routed_experts", "moe_intermediate_size",
    "use_mrope", "final_logit_softcapping", "attn_logit_softcapping",
    "use_bidirectional_attention", "qk_layernorm", "use_qk_norm",
)  # fmt: skip


def check_keys(d: dict, model_type: str, source: str) -> None:
    """Refuses an option of an architecture we do not implement (naming the key and value);
    warns about keys no rule knows, since they may be metadata or may change the model."""
    read = _READ_KEYS[model_type]
    for key in _REFUSED_KEYS:
        if key not in read and d.get(key):
            raise ValueError(
                f"{source}: {model_type} with {key}={d[key]!r} is not supported (that option of "
                "the architecture is not implemented)"
            )
    unknown = sorted(
        k for k in d if k not in read and k not in _NEUTRAL_KEYS and k not in _REFUSED_KEYS
    )
    if unknown:
        warnings.warn(
            f"{source}: {model_type} config keys not read: {unknown} (if one changes the "
            "architecture, the loaded model differs from transformers')",
            stacklevel=3,
        )
