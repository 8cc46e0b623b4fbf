"""Self-attention with RoPE and grouped-query heads, for training forwards and for decoding.

Letters as `transformer.py`: B batch, T query time, S key time, H query heads, KV key/value
heads, G = H / KV, K head width, R rotary width.

softmax(q kᵀ / √K + mask) v per head; query head h reads KV head ⌊h / G⌋ (Ainslie et al. 2023)
without K/V being repeated. RoPE (Su et al. 2021) rotates the first R dims of q and k by angle
p·θᵢ in HF's "rotate-half" pairing (dim i with i + R/2), after Qwen3's per-head RMSNorm of q
and k when the config has one:

    [x₁, x₂] ↦ [x₁ cos − x₂ sin,  x₂ cos + x₁ sin]

Two paths:
- Without a cache (training, scoring): `jax.nn.dot_product_attention` on (B, T, ·, K) — XLA's
  implementation (scores and softmax in float32) or cuDNN's flash attention
  (``ModelConfig.attention``). The mask is any (B, T, S) boolean: causal + padding, or a packed
  preference pair's [prompt | chosen | rejected] (cuDNN takes it as an additive bias).
- With a cache (decoding): `attend`, the same maths on the cache's (B, KV, S, K) layout, where
  each step's q·kᵀ and p·v are plain batched matmuls over the cache.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from rlhf_jax.models.config import ModelConfig
from rlhf_jax.models.layers import Dense, Norm

# Finite rather than -inf: a fully masked row (a pad query) then softmaxes to a uniform, finite
# distribution instead of NaN, and NaN cannot leak into gradients through jnp.where.
_MASK_VALUE = float(jnp.finfo(jnp.float32).min)


def rope_sin_cos(config: ModelConfig, positions_BxT, *, local: bool = False):
    """sin, cos of p·θᵢ, each (B, T, R/2), in float32 as HF computes them (``local``: the
    sliding layers' own frequencies, `ModelConfig.local_rope_inv_freq`)."""
    inv_freq = jnp.asarray(config.local_rope_inv_freq if local else config.rope_inv_freq)
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


def attend(q_BxTxHxK, k_BxKVxSxK, v_BxKVxSxK, mask_BxTxS, *, scale=None):
    """softmax(q kᵀ·scale, masked) v with GQA (scale: 1/√K unless given); scores and softmax
    in float32. Returns (B, T, H, K)."""
    b, t, h, k = q_BxTxHxK.shape
    kv = k_BxKVxSxK.shape[1]
    q = q_BxTxHxK.reshape(b, t, kv, h // kv, k)
    scores = jnp.einsum("btngk,bnsk->bngts", q, k_BxKVxSxK, preferred_element_type=jnp.float32) * (
        k**-0.5 if scale is None else scale
    )
    scores = jnp.where(mask_BxTxS[:, None, None, :, :], scores, _MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_BxKVxSxK.dtype)
    out = jnp.einsum("bngts,bnsk->btngk", probs, v_BxKVxSxK)
    return out.reshape(b, t, h, k)


def fused_attention(
    q_BxTxHxK, k_BxSxKVxK, v_BxSxKVxK, mask_BxTxS, implementation: str, *, scale=None
):
    """`jax.nn.dot_product_attention` with GQA and an arbitrary boolean mask. (B, T, H, K)."""
    if implementation == "cudnn" and q_BxTxHxK.dtype not in (jnp.bfloat16, jnp.float16):
        raise ValueError(
            f"attention='cudnn' needs a bfloat16 or float16 compute dtype; got {q_BxTxHxK.dtype}"
        )
    return jax.nn.dot_product_attention(
        q_BxTxHxK,
        k_BxSxKVxK,
        v_BxSxKVxK,
        mask=mask_BxTxS[:, None, :, :],
        scale=scale,
        implementation=implementation,
    )


class Attention(nnx.Module):
    """The q, k, v, o projections, kernels (D, H, K), (D, KV, K) ×2 and (H, K, D), and the
    attention between them."""

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
        # Qwen3: RMSNorm over each head of q and of k (one gain of K shared by the heads)
        self.q_norm = Norm(config, size=k, name="head_dim") if config.qk_norm else None
        self.k_norm = Norm(config, size=k, name="head_dim") if config.qk_norm else None
        self.use_rope = config.positions == "rope"
        self.implementation = config.attention
        self.scale = config.attn_scale or None

    def __call__(self, x_BxTxD, *, sin_cos, mask_BxTxS, kv_cache=None, write_at=None):
        """Returns (out_BxTxD, cache): with `kv_cache` the new k, v are written at `write_at`
        and the updated (k, v) returned; without one, cache is None."""
        q, k, v = self.q(x_BxTxD), self.k(x_BxTxD), self.v(x_BxTxD)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.use_rope:
            q, k = apply_rope(q, *sin_cos), apply_rope(k, *sin_cos)
        if kv_cache is None:
            out = fused_attention(q, k, v, mask_BxTxS, self.implementation, scale=self.scale)
            return self.o(out), None
        cache_k, cache_v = kv_cache
        at = (0, 0, write_at, 0)
        k = lax.dynamic_update_slice(cache_k, k.transpose(0, 2, 1, 3).astype(cache_k.dtype), at)
        v = lax.dynamic_update_slice(cache_v, v.transpose(0, 2, 1, 3).astype(cache_v.dtype), at)
        out = attend(q, k, v, mask_BxTxS, scale=self.scale)
        return self.o(out), (k, v)
