"""The preallocated KV cache of incremental decoding (`transformer.Transformer` with a cache).

(B, KV, S, K) per layer, written in place with `dynamic_update_slice`; keeping S second-to-last
makes each decode step's q·kᵀ and p·v plain batched matmuls over the cache.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from rlhf_jax.models.config import ModelConfig


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
