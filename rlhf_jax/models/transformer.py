"""One NNX decoder-only transformer family for Llama, Qwen2, GPT-2 and GPT-NeoX.

Letters: B batch, T query time, S key time (cache slots), D model width, H query heads,
KV key/value heads, G = H / KV query heads per KV head, K head width, R rotary width,
F MLP width, V vocabulary.

Block (pre-norm; Radford et al. 2019, Touvron et al. 2023):

    sequential:  x ← x + Attn(N₁(x));  x ← x + MLP(N₂(x))
    parallel:    x ← x + Attn(N₁(x)) + MLP(N₂(x))           (GPT-NeoX, Black et al. 2022)

Attention: softmax(q kᵀ / √K + mask) v per head, with grouped-query attention
(Ainslie et al. 2023): query head h reads KV head ⌊h / G⌋. RoPE (Su et al. 2021) rotates the
first R dims of q and k by angle p·θᵢ, in HF's "rotate-half" pairing (dim i with i + R/2):

    [x₁, x₂] ↦ [x₁ cos − x₂ sin,  x₂ cos + x₁ sin]

Logical axis names: every parameter carries `out_sharding` metadata naming its axes (with
`eager_sharding=False`, so creating a model needs no mesh); the sharding module maps them to
mesh axes with `flax.linen.logical_axis_rules` + `nnx.get_partition_spec` (flax passes a name
with no rule through unchanged, so give every name a rule, `None` to replicate):

    'vocab'      token-embedding rows and LM-head columns (V)
    'embed'      the residual stream (D)
    'heads'      query heads (H)
    'kv_heads'   key/value heads (KV)
    'head_dim'   width within a head (K)
    'mlp'        MLP hidden units (F)
    'positions'  rows of GPT-2's learned position table

Masks: attention takes `attn_mask_BxT` (True = real token) and `positions_BxT` separately, so a
left-padded row gives the same logits at its real tokens as the unpadded sequence does. Rows of
pad queries attend to nothing real; a finite mask value keeps their (ignored) outputs finite.

KV cache: (B, KV, S, K) per layer, preallocated, written in place with `dynamic_update_slice`.
Keeping S second-to-last makes each decode step's q·kᵀ and p·v plain batched matmuls over the
cache with no per-step transpose of the whole cache.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from rlhf_jax.models.config import ModelConfig

LOGICAL_AXES = ("vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "positions")

# Finite rather than -inf: a fully masked row (a pad query) then softmaxes to a uniform, finite
# distribution instead of NaN, and NaN cannot leak into gradients through jnp.where.
_MASK_VALUE = float(jnp.finfo(jnp.float32).min)


def _param(rngs: nnx.Rngs | None, init, shape, names, dtype) -> nnx.Param:
    value = init(rngs.params() if rngs is not None else None, shape, dtype)
    return nnx.Param(value, out_sharding=tuple(names), eager_sharding=False)


def _lead(p, ndim: int):
    """`p` with leading unit axes up to `ndim` (explicit, since rank promotion is an error)."""
    return p.reshape((1,) * (ndim - p.ndim) + p.shape)


def _normal(std):
    return lambda key, shape, dtype: std * jax.random.normal(key, shape, dtype)


def _zeros(key, shape, dtype):
    return jnp.zeros(shape, dtype)


def _ones(key, shape, dtype):
    return jnp.ones(shape, dtype)


class Dense(nnx.Module):
    """y = x·W (+ b), contracting the trailing `len(in_shape)` dims of x with W's leading dims.

    Multi-dimensional kernels (e.g. (D, H, K) for q) keep heads a separate, shardable axis.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        out_shape: Sequence[int],
        *,
        in_names: Sequence[str],
        out_names: Sequence[str],
        use_bias: bool,
        config: ModelConfig,
        rngs: nnx.Rngs,
    ):
        pdt = jnp.dtype(config.param_dtype)
        shape = (*in_shape, *out_shape)
        self.kernel = _param(rngs, _normal(config.init_std), shape, (*in_names, *out_names), pdt)
        self.bias = _param(rngs, _zeros, tuple(out_shape), out_names, pdt) if use_bias else None
        self.n_in = len(in_shape)
        self.dtype = config.dtype

    def __call__(self, x):
        dtype = jnp.dtype(self.dtype)
        y = jnp.tensordot(x.astype(dtype), self.kernel[...].astype(dtype), axes=self.n_in)
        if self.bias is not None:
            y = y + _lead(self.bias[...].astype(dtype), y.ndim)
        return y


class Norm(nnx.Module):
    """RMSNorm, x·rsqrt(mean x² + ε)·g (Zhang & Sennrich 2019), or LayerNorm (Ba et al. 2016).

    Statistics are taken in float32 whatever the compute dtype.
    """

    def __init__(self, config: ModelConfig):
        pdt = jnp.dtype(config.param_dtype)
        d = config.hidden_size
        self.scale = _param(None, _ones, (d,), ("embed",), pdt)
        self.bias = _param(None, _zeros, (d,), ("embed",), pdt) if config.norm == "layer" else None
        self.eps = config.norm_eps
        self.dtype = config.dtype

    def __call__(self, x_BxTxD):
        dtype = jnp.dtype(self.dtype)
        x = x_BxTxD.astype(jnp.float32)
        if self.bias is None:
            x = x * lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
            # HF casts back before the gain; do the same so bf16 runs round identically.
            return x.astype(dtype) * _lead(self.scale[...].astype(dtype), x.ndim)
        mean = jnp.mean(x, axis=-1, keepdims=True)
        x = x - mean
        x = x * lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
        return (x * _lead(self.scale[...], x.ndim) + _lead(self.bias[...], x.ndim)).astype(dtype)


def _activation(name: str, x):
    if name == "silu":
        return jax.nn.silu(x)
    if name == "gelu":
        return jax.nn.gelu(x, approximate=False)
    if name == "gelu_tanh":
        return jax.nn.gelu(x, approximate=True)
    if name == "relu":
        return jax.nn.relu(x)
    raise ValueError(f"unknown activation {name!r}")


class MLP(nnx.Module):
    """Gated (SwiGLU, Shazeer 2020): down(act(gate x) ⊙ up x); plain: proj(act(fc x))."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        d, f = config.hidden_size, config.mlp_dim
        kw = dict(use_bias=config.mlp_bias, config=config, rngs=rngs)
        into = dict(in_names=("embed",), out_names=("mlp",))
        out = dict(in_names=("mlp",), out_names=("embed",))
        if config.gated_mlp:
            self.gate = Dense((d,), (f,), **into, **kw)
            self.up = Dense((d,), (f,), **into, **kw)
            self.down = Dense((f,), (d,), **out, **kw)
        else:
            self.fc = Dense((d,), (f,), **into, **kw)
            self.proj = Dense((f,), (d,), **out, **kw)
        self.gated = config.gated_mlp
        self.activation = config.activation

    def __call__(self, x_BxTxD):
        if self.gated:
            return self.down(_activation(self.activation, self.gate(x_BxTxD)) * self.up(x_BxTxD))
        return self.proj(_activation(self.activation, self.fc(x_BxTxD)))


def rope_sin_cos(config: ModelConfig, positions_BxT):
    """sin, cos of p·θᵢ, each (B, T, R/2), in float32 as HF computes them."""
    inv_freq = jnp.asarray(config.rope_inv_freq)
    angles = positions_BxT.astype(jnp.float32)[..., None] * inv_freq[None, None, :]
    return jnp.sin(angles), jnp.cos(angles)


def apply_rope(x_BxTxNxK, sin_BxTxH, cos_BxTxH):
    """Rotates the first R = 2·sin.shape[-1] dims of each head (rotate-half pairing)."""
    half = sin_BxTxH.shape[-1]
    sin = sin_BxTxH[:, :, None, :].astype(x_BxTxNxK.dtype)
    cos = cos_BxTxH[:, :, None, :].astype(x_BxTxNxK.dtype)
    x1, x2 = x_BxTxNxK[..., :half], x_BxTxNxK[..., half : 2 * half]
    rotated = [x1 * cos - x2 * sin, x2 * cos + x1 * sin]
    if 2 * half < x_BxTxNxK.shape[-1]:
        rotated.append(x_BxTxNxK[..., 2 * half :])
    return jnp.concatenate(rotated, axis=-1)


def attend(q_BxTxHxK, k_BxKVxSxK, v_BxKVxSxK, mask_BxTxS):
    """softmax(q kᵀ/√K, masked) v with GQA; scores and softmax in float32. Returns (B,T,H,K)."""
    b, t, h, k = q_BxTxHxK.shape
    kv = k_BxKVxSxK.shape[1]
    q = q_BxTxHxK.reshape(b, t, kv, h // kv, k)
    scores = jnp.einsum("btngk,bnsk->bngts", q, k_BxKVxSxK, preferred_element_type=jnp.float32) * (
        k**-0.5
    )
    scores = jnp.where(mask_BxTxS[:, None, None, :, :], scores, _MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_BxKVxSxK.dtype)
    out = jnp.einsum("bngts,bnsk->btngk", probs, v_BxKVxSxK)
    return out.reshape(b, t, h, k)


class Attention(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        d, h, kv, k = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
        kw = dict(config=config, rngs=rngs)
        self.q = Dense(
            (d,), (h, k), in_names=("embed",), out_names=("heads", "head_dim"),
            use_bias=config.qkv_bias, **kw,
        )  # fmt: skip
        self.k = Dense(
            (d,), (kv, k), in_names=("embed",), out_names=("kv_heads", "head_dim"),
            use_bias=config.qkv_bias, **kw,
        )  # fmt: skip
        self.v = Dense(
            (d,), (kv, k), in_names=("embed",), out_names=("kv_heads", "head_dim"),
            use_bias=config.qkv_bias, **kw,
        )  # fmt: skip
        self.o = Dense(
            (h, k), (d,), in_names=("heads", "head_dim"), out_names=("embed",),
            use_bias=config.out_bias, **kw,
        )  # fmt: skip
        self.use_rope = config.positions == "rope"

    def __call__(self, x_BxTxD, *, sin_cos, mask_BxTxS, kv_cache=None, write_at=None):
        """Returns (out_BxTxD, (k, v)); with `kv_cache` the new k, v are written at `write_at`."""
        q, k, v = self.q(x_BxTxD), self.k(x_BxTxD), self.v(x_BxTxD)
        if self.use_rope:
            q, k = apply_rope(q, *sin_cos), apply_rope(k, *sin_cos)
        k = k.transpose(0, 2, 1, 3)
        v = v.transpose(0, 2, 1, 3)
        if kv_cache is not None:
            cache_k, cache_v = kv_cache
            at = (0, 0, write_at, 0)
            k = lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), at)
            v = lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), at)
        return self.o(attend(q, k, v, mask_BxTxS)), (k, v)


class Block(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.attn_norm = Norm(config)
        self.attn = Attention(config, rngs=rngs)
        self.mlp_norm = Norm(config)
        self.mlp = MLP(config, rngs=rngs)
        self.parallel_residual = config.parallel_residual

    def __call__(self, x_BxTxD, **attn_kwargs):
        a, kv = self.attn(self.attn_norm(x_BxTxD), **attn_kwargs)
        if self.parallel_residual:
            return x_BxTxD + a + self.mlp(self.mlp_norm(x_BxTxD)), kv
        x = x_BxTxD + a
        return x + self.mlp(self.mlp_norm(x)), kv


@flax.struct.dataclass
class KVCache:
    """Preallocated keys/values for incremental decoding.

    Slot s of every row holds the token fed at call-time index s (prompts are left-padded, so
    all rows share slot indices); `valid_BxS` marks slots holding real tokens. A call must
    fit: `end + T ≤ S` (`dynamic_update_slice` would clamp the write, not fail, under jit);
    `generation.sample` sizes the cache exactly for prompt + response.
    """

    k: tuple[jax.Array, ...]  # per layer, (B, KV, S, K)
    v: tuple[jax.Array, ...]  # per layer, (B, KV, S, K)
    valid_BxS: jax.Array  # bool
    end: jax.Array  # int32 (): slots [0, end) have been written

    @classmethod
    def create(cls, config: ModelConfig, batch: int, length: int) -> KVCache:
        shape = (batch, config.num_kv_heads, length, config.head_dim)
        dtype = jnp.dtype(config.dtype)
        layers = tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
        return cls(
            k=layers,
            v=tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers)),
            valid_BxS=jnp.zeros((batch, length), bool),
            end=jnp.zeros((), jnp.int32),
        )


class Transformer(nnx.Module):
    """Embeddings → blocks → final norm: the trunk shared by LM, reward and value models."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        pdt = jnp.dtype(config.param_dtype)
        init = _normal(config.init_std)
        self.config = config
        self.embed = _param(
            rngs, init, (config.vocab_size, config.hidden_size), ("vocab", "embed"), pdt
        )
        shape = (config.max_position_embeddings, config.hidden_size)
        self.pos_embed = (
            _param(rngs, init, shape, ("positions", "embed"), pdt)
            if config.positions == "learned"
            else None
        )
        self.layers = nnx.List([Block(config, rngs=rngs) for _ in range(config.num_layers)])
        self.final_norm = Norm(config)

    def __call__(
        self,
        tokens_BxT,
        *,
        positions_BxT,
        attn_mask_BxT,
        cache: KVCache | None = None,
        mask_BxTxT=None,
    ):
        """Final-normed hidden states (B, T, D) and the updated cache (None without one).

        ``mask_BxTxT`` (no cache), when given, replaces the causal mask built from
        ``attn_mask_BxT``: query t attends key s where it is True. Packed rows use it, e.g.
        a preference pair as [prompt | chosen | rejected] (`rlhf_jax.training.pairs`).
        """
        cfg = self.config
        b, t = tokens_BxT.shape
        for name, arr in [("positions_BxT", positions_BxT), ("attn_mask_BxT", attn_mask_BxT)]:
            if arr.shape != (b, t):
                raise ValueError(f"{name} has shape {arr.shape}; expected {(b, t)} like tokens")
        if mask_BxTxT is not None:
            if cache is not None:
                raise ValueError("mask_BxTxT is for cache-free forwards; decoding builds its own")
            if mask_BxTxT.shape != (b, t, t):
                raise ValueError(f"mask_BxTxT has shape {mask_BxTxT.shape}; expected {(b, t, t)}")
        elif self.pos_embed is not None and cache is None and t > cfg.max_position_embeddings:
            raise ValueError(
                f"sequence length {t} exceeds the model's max_position_embeddings "
                f"{cfg.max_position_embeddings}"
            )
        dtype = jnp.dtype(cfg.dtype)
        x = jnp.take(self.embed[...], tokens_BxT, axis=0).astype(dtype)
        if self.pos_embed is not None:
            x = x + jnp.take(self.pos_embed[...], positions_BxT, axis=0).astype(dtype)
        sin_cos = rope_sin_cos(cfg, positions_BxT) if cfg.positions == "rope" else None
        attn_mask_BxT = attn_mask_BxT.astype(bool)
        if cache is None:
            if mask_BxTxT is not None:
                mask_BxTxS = mask_BxTxT.astype(bool)
            else:
                causal_TxT = jnp.tril(jnp.ones((t, t), bool))
                mask_BxTxS = causal_TxT[None] & attn_mask_BxT[:, None, :]
            for layer in self.layers:
                x, _ = layer(x, sin_cos=sin_cos, mask_BxTxS=mask_BxTxS)
            return self.final_norm(x), None
        s = cache.valid_BxS.shape[1]
        if t > s:
            raise ValueError(f"{t} tokens do not fit a KV cache of {s} slots")
        valid_BxS = lax.dynamic_update_slice(cache.valid_BxS, attn_mask_BxT, (0, cache.end))
        query_slot_T = cache.end + jnp.arange(t)
        causal_TxS = jnp.arange(s)[None, :] <= query_slot_T[:, None]
        mask_BxTxS = causal_TxS[None] & valid_BxS[:, None, :]
        new_k, new_v = [], []
        for layer, k, v in zip(self.layers, cache.k, cache.v, strict=True):
            x, (k, v) = layer(
                x, sin_cos=sin_cos, mask_BxTxS=mask_BxTxS, kv_cache=(k, v), write_at=cache.end
            )
            new_k.append(k)
            new_v.append(v)
        cache = KVCache(k=tuple(new_k), v=tuple(new_v), valid_BxS=valid_BxS, end=cache.end + t)
        return self.final_norm(x), cache


class CausalLM(nnx.Module):
    """Transformer trunk + LM head (its own matrix, or the token embedding when tied)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.trunk = Transformer(config, rngs=rngs)
        # Assigned once: NNX fixes an attribute as data or static at its first assignment.
        self.lm_head = (
            None
            if config.tie_embeddings
            else Dense(
                (config.hidden_size,), (config.vocab_size,), in_names=("embed",),
                out_names=("vocab",), use_bias=False, config=config, rngs=rngs,
            )
        )  # fmt: skip

    def __call__(self, tokens_BxT, *, positions_BxT, attn_mask_BxT):
        """Float32 logits (B, T, V); logits[:, t] is the distribution of token t + 1."""
        h = self.hidden_states(tokens_BxT, positions_BxT=positions_BxT, attn_mask_BxT=attn_mask_BxT)
        return self.logits(h)

    def hidden_states(self, tokens_BxT, *, positions_BxT, attn_mask_BxT, mask_BxTxT=None):
        """Final-normed hidden states (B, T, D), the input of the LM head and scalar heads
        (``mask_BxTxT``: an explicit attention mask, as `Transformer`)."""
        h, _ = self.trunk(
            tokens_BxT,
            positions_BxT=positions_BxT,
            attn_mask_BxT=attn_mask_BxT,
            mask_BxTxT=mask_BxTxT,
        )
        return h

    def logits(self, h_BxTxD):
        dtype = jnp.dtype(self.config.dtype)
        if self.lm_head is None:
            w_VxD = self.trunk.embed[...].astype(dtype)
            return jnp.einsum(
                "btd,vd->btv", h_BxTxD.astype(dtype), w_VxD, preferred_element_type=jnp.float32
            )
        w_DxV = self.lm_head.kernel[...].astype(dtype)
        return jnp.einsum(
            "btd,dv->btv", h_BxTxD.astype(dtype), w_DxV, preferred_element_type=jnp.float32
        )

    def decode(self, tokens_BxT, *, positions_BxT, attn_mask_BxT, cache: KVCache):
        """Logits (B, T, V) of `tokens` appended at the cache's end, and the updated cache."""
        h, cache = self.trunk(
            tokens_BxT, positions_BxT=positions_BxT, attn_mask_BxT=attn_mask_BxT, cache=cache
        )
        return self.logits(h), cache

    def init_cache(self, batch: int, length: int) -> KVCache:
        return KVCache.create(self.config, batch, length)


def positions_from_mask(mask_BxT):
    """Position ids that count only real tokens: cumsum(mask) − 1, clipped at 0 for pads.

    These make a left-padded row's positions equal the unpadded sequence's, as HF `generate`
    does.
    """
    mask = mask_BxT.astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)
