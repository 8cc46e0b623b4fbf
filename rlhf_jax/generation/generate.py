"""Batched autoregressive sampling with a preallocated KV cache, as one compiled loop.

Letters: B batch, P prompt length (left-padded), N max new tokens, S = P + N − 1 cache slots,
V vocabulary.

    prefill:  one forward over the (B, P) prompt fills cache slots [0, P) and gives the
              distribution of response token 0
    decode:   `lax.while_loop` over i = 1 … N−1: feed token i−1 at slot P+i−1, sample token i;
              stops early once every row has emitted an EOS

Position ids count real tokens only (`positions_from_mask`), so a left-padded prompt samples
what the unpadded one would; the response token i of row b sits at position len_b + i.
The whole thing is a pure function of (params, prompt, key): `sample` can be called inside a
larger jitted step (PPO rollouts); `generate` is `sample` jitted on its own, with the graphdef
and `SamplingConfig` static, so it traces once per (B, P, N, config).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from rlhf_jax.generation.sampling import SamplingConfig, sample_token
from rlhf_jax.models.layers import is_matrix, is_variable
from rlhf_jax.models.transformer import CausalLM, positions_from_mask


@flax.struct.dataclass
class Generation:
    tokens_BxN: jax.Array  # int32 response tokens; `pad_id` after a row's EOS
    mask_BxN: jax.Array  # bool: True at generated tokens up to and including the EOS
    logprobs_BxN: jax.Array  # float32 log softmax(logits/T)[token] (unfiltered); 0 off-mask
    num_steps: jax.Array  # int32 (): tokens generated per row before the loop stopped (≤ N)


def compute_dtype_matrices(params: nnx.State, dtype: str) -> nnx.State:
    """`params` with every floating matrix (projections, embeddings, LM head: `is_matrix`) cast
    to `dtype`; vectors (norm scales, biases) keep their storage dtype."""

    def cast(x):
        value = x.get_value() if is_variable(x) else x
        if not (is_matrix(x) and jnp.issubdtype(value.dtype, jnp.floating)):
            return x
        return x.replace(value.astype(dtype)) if is_variable(x) else value.astype(dtype)

    return jax.tree.map(cast, params, is_leaf=is_variable)


def sample(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    prompt_BxP: jax.Array,
    prompt_mask_BxP: jax.Array,
    key: jax.Array,
    *,
    config: SamplingConfig,
) -> Generation:
    """Samples up to `config.max_new_tokens` tokens after each left-padded prompt row.

    Deterministic for a given `key`: the token at step i uses `fold_in(key, i)`.
    """
    model = nnx.merge(graphdef, params)
    if not isinstance(model, CausalLM):
        raise TypeError(f"sample needs a CausalLM graphdef; got {type(model).__name__}")
    cfg = model.config
    if cfg.dtype != cfg.param_dtype:
        # Every decode step reads all weights. The layers cast each matrix to the compute dtype
        # on use, so casting them once here gives the same results and halves the bytes each
        # step streams when float32 parameters run in bfloat16.
        model = nnx.merge(graphdef, compute_dtype_matrices(params, cfg.dtype))
    b, p = prompt_BxP.shape
    n = config.max_new_tokens
    if prompt_mask_BxP.shape != (b, p):
        raise ValueError(f"prompt_mask_BxP has shape {prompt_mask_BxP.shape}; expected {(b, p)}")
    if cfg.positions == "learned" and p + n > cfg.max_position_embeddings:
        raise ValueError(
            f"prompt length {p} + max_new_tokens {n} exceeds the model's "
            f"max_position_embeddings {cfg.max_position_embeddings}"
        )
    eos_ids = jnp.asarray(config.eos_ids or (-1,), jnp.int32)

    def is_eos(token_B):
        return jnp.any(token_B[:, None] == eos_ids[None, :], axis=-1)

    prompt_mask_BxP = prompt_mask_BxP.astype(bool)
    positions_BxP = positions_from_mask(prompt_mask_BxP)
    cache = model.init_cache(b, p + n - 1)
    # Each layer's parameters sliced from the stacked ones once, here: sliced inside the loop
    # body, XLA:CPU copied every layer's weights on every decode step.
    blocks = model.trunk.layer_blocks()
    h_BxPxD, cache = model.trunk(
        prompt_BxP,
        positions_BxT=positions_BxP,
        attn_mask_BxT=prompt_mask_BxP,
        cache=cache,
        blocks=blocks,
    )
    # Only the last prompt position's distribution is needed: skip the other P − 1 rows of
    # the (D × V) head matmul.
    logits_Bx1xV = model.logits(h_BxPxD[:, -1:])
    token_B, logprob_B = sample_token(logits_Bx1xV[:, 0], jax.random.fold_in(key, 0), config)
    tokens_BxN = jnp.full((b, n), config.pad_id, jnp.int32).at[:, 0].set(token_B)
    logprobs_BxN = jnp.zeros((b, n), jnp.float32).at[:, 0].set(logprob_B)
    mask_BxN = jnp.zeros((b, n), bool).at[:, 0].set(True)
    done_B = is_eos(token_B)
    prompt_len_B = jnp.sum(prompt_mask_BxP, axis=-1, dtype=jnp.int32)

    def cond(state):
        i, _, _, done_B, *_ = state
        return (i < n) & ~jnp.all(done_B)

    def body(state):
        i, cache, token_B, done_B, tokens_BxN, logprobs_BxN, mask_BxN = state
        logits_Bx1xV, cache = model.decode(
            token_B[:, None],
            positions_BxT=(prompt_len_B + i - 1)[:, None],
            attn_mask_BxT=jnp.ones((b, 1), bool),
            cache=cache,
            blocks=blocks,
        )
        token_B, logprob_B = sample_token(logits_Bx1xV[:, 0], jax.random.fold_in(key, i), config)
        token_B = jnp.where(done_B, config.pad_id, token_B)
        logprob_B = jnp.where(done_B, 0.0, logprob_B)
        at = (0, i)
        tokens_BxN = lax.dynamic_update_slice(tokens_BxN, token_B[:, None], at)
        logprobs_BxN = lax.dynamic_update_slice(logprobs_BxN, logprob_B[:, None], at)
        mask_BxN = lax.dynamic_update_slice(mask_BxN, ~done_B[:, None], at)
        return i + 1, cache, token_B, done_B | is_eos(token_B), tokens_BxN, logprobs_BxN, mask_BxN

    state = (jnp.int32(1), cache, token_B, done_B, tokens_BxN, logprobs_BxN, mask_BxN)
    steps, _, _, _, tokens_BxN, logprobs_BxN, mask_BxN = lax.while_loop(cond, body, state)
    return Generation(
        tokens_BxN=tokens_BxN, mask_BxN=mask_BxN, logprobs_BxN=logprobs_BxN, num_steps=steps
    )


generate = jax.jit(sample, static_argnums=0, static_argnames="config")
generate.__doc__ = """`sample`, jitted: graphdef and `config` static; traces once per shape."""
