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

HF config.json ⇄ ModelConfig: `hf_config.py`.
"""

from __future__ import annotations

import dataclasses
import math
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
