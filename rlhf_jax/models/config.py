"""`ModelConfig`: one typed description of a causal-LM architecture, read from an HF config.json.

The supported families differ only in a handful of switches, so they share one config and one
module family (`transformer.py`):

    family     norm   positions          mlp            biases         residual   extras
    llama      RMS    RoPE (+ llama3)    SwiGLU         opt. q/k/v/o   sequential
    qwen2      RMS    RoPE               SwiGLU         q/k/v          sequential sliding layers
    qwen3      RMS    RoPE               SwiGLU         opt. q/k/v/o   sequential q/k RMSNorm,
                                                                                  sliding layers
    mistral    RMS    RoPE               SwiGLU         none           sequential sliding window
    gemma3     RMS(1+g) RoPE ×2 bases    GeGLU          opt. q/k/v/o   sandwich   √D embedding
               scale, q/k norms, query_pre_attn_scalar, final logit soft-capping, sliding layers
    gpt2       Layer  learned            GELU (tanh)    all            sequential
    gpt_neox   Layer  partial RoPE       GELU           all            parallel

(every family's LM head tied or untied as its config says). Sliding-window attention: a query
at position p sees keys at positions p − W < q ≤ p (HF's window W includes the query itself),
on every layer (Mistral) or on the layers `layer_types` marks "sliding_attention" (Qwen2/3,
from `max_window_layers` when `use_sliding_window` is set; Gemma 3, whose sliding layers also
have their own RoPE base). Gemma 3's block is a sandwich: x ← x + N₂(Attn(N₁ x)), then
x ← x + N₄(MLP(N₃ x)), every norm x·(1 + g) with g in float32.

`from_hf_dict` accepts both the transformers-5 layout (`rope_parameters`) and the older one
(`rope_theta`/`rope_scaling`, NeoX `rotary_pct`/`rotary_emb_base`), since checkpoints on the hub
were written by many versions. `to_hf_dict` writes the transformers-5 layout back.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Literal

import numpy as np

ModelType = Literal["llama", "qwen2", "qwen3", "mistral", "gemma3_text", "gpt2", "gpt_neox"]
SUPPORTED_MODEL_TYPES: tuple[str, ...] = (
    "llama", "qwen2", "qwen3", "mistral", "gemma3_text", "gpt2", "gpt_neox",
)  # fmt: skip
LLAMA_LIKE: tuple[str, ...] = ("llama", "qwen2", "qwen3", "mistral", "gemma3_text")
LAYER_TYPES: tuple[str, ...] = ("full_attention", "sliding_attention")
# remat, per scanned block: "none" keeps every activation the backward pass needs; "block"
# keeps only each block's input and recomputes the rest; "dots" also keeps the outputs of the
# weight matmuls (everything but attention's and the elementwise ops' is recomputed).
REMAT_POLICIES: tuple[str, ...] = ("none", "block", "dots")
# attention: "xla" (XLA's fused softmax(q kᵀ) v, every device) or "cudnn" (cuDNN's flash
# attention, GPUs in bfloat16/float16 only).
ATTENTION_IMPLS: tuple[str, ...] = ("xla", "cudnn")
# Log-probs run the LM head over at most this many logits at a time (256 MiB in float32), so
# that a step never holds B × T × V of them: e.g. 441 rows of Qwen2's 151,936-token vocabulary.
LOGPROB_CHUNK_ELEMENTS = 1 << 26

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


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency rescaling for context extension (only the kinds that change `inv_freq`)."""

    kind: Literal["linear", "llama3"]
    factor: float  # every (linear) or the low (llama3) frequency is divided by this
    low_freq_factor: float = 1.0  # llama3: wavelengths above orig_len/low are fully scaled
    high_freq_factor: float = 4.0  # llama3: wavelengths below orig_len/high are left alone
    original_max_position_embeddings: int = 8192  # llama3: the pre-extension context length


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a decoder-only LM. Hashable, so it can be a static jit argument."""

    model_type: ModelType  # the HF family; decides the checkpoint layout in hf_io
    vocab_size: int  # V: rows of the embedding / columns of the LM head
    hidden_size: int  # D: residual stream width
    num_layers: int  # number of transformer blocks
    num_heads: int  # H: query heads
    num_kv_heads: int  # KV: key/value heads (GQA when < H; each serves H // KV query heads)
    head_dim: int  # K: width of one head
    mlp_dim: int  # F: MLP hidden width
    # RMSNorm (no bias, no centring), LayerNorm, or Gemma's RMSNorm with gain 1 + g in float32
    norm: Literal["rms", "layer", "rms_offset"]
    norm_eps: float  # epsilon inside the norm's rsqrt
    activation: Literal["silu", "gelu", "gelu_tanh", "relu"]  # MLP nonlinearity
    gated_mlp: bool  # SwiGLU-style down(act(gate(x)) * up(x)) instead of proj(act(fc(x)))
    positions: Literal["rope", "learned"]  # rotary embedding or a learned position table
    max_position_embeddings: int  # learned table size; for RoPE only a nominal context length
    rope_theta: float = 10000.0  # RoPE base wavelength
    rotary_dim: int = 0  # leading head dims that RoPE rotates (NeoX partial rotary); 0 = none
    rope_scaling: RopeScaling | None = None  # context-extension rescaling of the frequencies
    qkv_bias: bool = False  # biases on the q/k/v projections (Qwen2, GPT-2, NeoX)
    qk_norm: bool = False  # RMSNorm over each head's K dims of q and k, before RoPE (Qwen3)
    post_norms: bool = False  # norms on the attention and MLP outputs too (Gemma 3's sandwich)
    embed_scale: bool = False  # token embeddings times √D (Gemma)
    attn_scale: float = 0.0  # the scores' scale (0: 1/√K; Gemma 3: query_pre_attn_scalar^-½)
    final_softcap: float = 0.0  # logits → c·tanh(logits / c) (0: none)
    local_rope_theta: float = 0.0  # sliding layers' RoPE base, unscaled (0: as the others')
    sliding_window: int = 0  # W of the sliding-window layers (0: none)
    # per layer, "full_attention" or "sliding_attention" (empty: every layer sliding when
    # sliding_window > 0, else full)
    layer_types: tuple[str, ...] = ()
    out_bias: bool = False  # bias on the attention output projection
    mlp_bias: bool = False  # biases on the MLP projections
    parallel_residual: bool = False  # x + attn(ln1 x) + mlp(ln2 x) (GPT-NeoX)
    tie_embeddings: bool = False  # LM head is the transposed token embedding
    init_std: float = 0.02  # normal init of the weight matrices (HF `initializer_range`)
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()  # several for e.g. Llama-3 instruct models
    pad_token_id: int | None = None
    dtype: str = "float32"  # compute dtype of activations (e.g. "bfloat16")
    param_dtype: str = "float32"  # storage dtype of parameters
    # How the step runs, not what the model computes (HF export ignores these):
    remat: Literal["none", "block", "dots"] = "none"  # what a scanned block keeps for backward
    attention: Literal["xla", "cudnn"] = "xla"  # jax.nn.dot_product_attention's implementation
    logprob_chunk: int = 0  # LM-head rows per log-prob chunk (0: as fit LOGPROB_CHUNK_ELEMENTS)
    scan_unroll: int = 1  # layers per iteration of the scanned layer loop (≥ num_layers: unrolled)

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"model_type {self.model_type!r} is not supported; "
                f"expected one of {SUPPORTED_MODEL_TYPES}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                f"({self.num_kv_heads})"
            )
        if self.positions == "rope" and (self.rotary_dim <= 0 or self.rotary_dim % 2):
            raise ValueError(f"rotary_dim must be a positive even number; got {self.rotary_dim}")
        if self.rotary_dim > self.head_dim:
            raise ValueError(f"rotary_dim {self.rotary_dim} exceeds head_dim {self.head_dim}")
        for field, allowed in (("remat", REMAT_POLICIES), ("attention", ATTENTION_IMPLS)):
            if getattr(self, field) not in allowed:
                raise ValueError(f"{field}={getattr(self, field)!r}; expected one of {allowed}")
        if self.logprob_chunk < 0:
            raise ValueError(f"logprob_chunk={self.logprob_chunk}; expected ≥ 0 (0: automatic)")
        if self.scan_unroll < 1:
            raise ValueError(f"scan_unroll={self.scan_unroll}; expected ≥ 1")
        if self.sliding_window < 0:
            raise ValueError(f"sliding_window={self.sliding_window}; expected ≥ 0 (0: none)")
        if self.layer_types:
            if len(self.layer_types) != self.num_layers:
                raise ValueError(
                    f"layer_types has {len(self.layer_types)} entries for {self.num_layers} layers"
                )
            bad = sorted(set(self.layer_types) - set(LAYER_TYPES))
            if bad:
                raise ValueError(f"layer_types {bad} not supported; expected {LAYER_TYPES}")
            if "sliding_attention" in self.layer_types and not self.sliding_window:
                raise ValueError("layer_types has sliding_attention layers but sliding_window=0")

    @property
    def local_rope_inv_freq(self) -> np.ndarray | None:
        """The sliding layers' own inverse frequencies (None: the same as every layer's)."""
        if not self.local_rope_theta:
            return None
        dim = self.rotary_dim
        exponent = np.arange(0, dim, 2, dtype=np.float32) / dim
        return (1.0 / (self.local_rope_theta**exponent)).astype(np.float32)

    @property
    def scores_scale(self) -> float:
        return self.attn_scale or self.head_dim**-0.5

    @property
    def layer_windows(self) -> tuple[int, ...]:
        """Each layer's attention window W (0: full causal attention)."""
        if not self.layer_types:
            return (self.sliding_window,) * self.num_layers
        w = self.sliding_window
        return tuple(w if t == "sliding_attention" else 0 for t in self.layer_types)

    @property
    def rope_inv_freq(self) -> np.ndarray:
        """Inverse frequencies θ^(−2i/d_rot), i < d_rot/2, after any scaling (float32, numpy)."""
        dim = self.rotary_dim
        inv_freq = 1.0 / (self.rope_theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
        inv_freq = inv_freq.astype(np.float32)
        s = self.rope_scaling
        if s is None:
            return inv_freq
        if s.kind == "linear":
            return (inv_freq / s.factor).astype(np.float32)
        # Llama 3.1 (https://github.com/meta-llama/llama-models): long wavelengths are divided
        # by `factor`, short ones kept, and the band between them interpolated smoothly.
        old_len = s.original_max_position_embeddings
        low_wavelen = old_len / s.low_freq_factor
        high_wavelen = old_len / s.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
        smooth = (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
        smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain fields (JSON-ready but for tuples), as phase artifacts record them."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """The inverse of `to_dict` (lists back to tuples, `rope_scaling` back to its type)."""
        d = dict(d)
        if d.get("rope_scaling") is not None:
            d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
        d["eos_token_ids"] = tuple(d.get("eos_token_ids") or ())
        d["layer_types"] = tuple(d.get("layer_types") or ())
        return cls(**d)


# ---------------------------------------------------------------------------------------------
# HF config.json ⇄ ModelConfig


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


def _check_keys(d: dict, model_type: str, source: str) -> None:
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
    _check_keys(d, model_type, source)
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
