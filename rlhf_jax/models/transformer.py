"""One NNX decoder-only transformer family: Llama, Qwen2/3, Mistral, Gemma 3, GPT-2, GPT-NeoX.

Letters: B batch, T query time, S key time (cache slots), D model width, H query heads,
KV key/value heads, G = H / KV query heads per KV head, K head width, R rotary width,
F MLP width, V vocabulary.

Block (pre-norm; Radford et al. 2019, Touvron et al. 2023):

    sequential:  x ← x + Attn(N₁(x));  x ← x + MLP(N₂(x))
    parallel:    x ← x + Attn(N₁(x)) + MLP(N₂(x))           (GPT-NeoX, Black et al. 2022)
    sandwich:    x ← x + N₂(Attn(N₁(x)));  x ← x + N₄(MLP(N₃(x)))   (Gemma 3)

Attention (RoPE, grouped-query heads, the fused and the cached path): `attention.py`.

Layers as one scanned block: the L blocks are one `Block` whose every parameter has a leading
``layers`` axis (layer i at index i, built from the same random stream as L separate blocks),
applied with `jax.lax.scan` — split into graph and state outside, merged inside the body — so
a forward's program size and compile time do not grow with depth. ``ModelConfig.remat`` wraps
the body in `jax.checkpoint`; ``ModelConfig.scan_unroll`` runs that many layers per iteration
(all of them: the unrolled program, which lets XLA fuse across layers — faster for a shallow
model on a CPU). Decoding loops over the layers instead (static slices of the
stacked parameters), so that each layer's KV cache stays its own buffer, updated in place.

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
    'layers'     the stacked blocks (L)
    'lora_rank'  the inner width of a low-rank adapter (`lora`)

Masks: attention takes `attn_mask_BxT` (True = real token) and `positions_BxT` separately, so a
left-padded row gives the same logits at its real tokens as the unpadded sequence does. Rows of
pad queries attend to nothing real; a finite mask value keeps their (ignored) outputs finite.
Sliding-window layers (``ModelConfig.layer_windows``) also drop keys W or more positions back;
when full and sliding layers interleave, the scanned loop carries each layer's choice.

KV cache: (B, KV, S, K) per layer, preallocated, written in place with `dynamic_update_slice`.
Keeping S second-to-last makes each decode step's q·kᵀ and p·v plain batched matmuls over the
cache with no per-step transpose of the whole cache.

Log-probs: `CausalLM.token_logprobs` runs the LM head, log-softmax, the token's log-prob and
the entropy over chunks of rows (``ModelConfig.logprob_chunk``), each chunk rematerialised in
the backward pass, so that no step holds B × T × V logits.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from rlhf_jax.losses.logprobs import entropy_from_logits, sequence_logprobs
from rlhf_jax.models.attention import Attention, rope_sin_cos
from rlhf_jax.models.config import LOGPROB_CHUNK_ELEMENTS, ModelConfig
from rlhf_jax.models.kv_cache import KVCache
from rlhf_jax.models.layers import MLP, Dense, Norm, is_variable, normal_init, param

LOGICAL_AXES = (
    "vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "positions", "layers", "lora_rank"
)  # fmt: skip

_REMAT_POLICIES = {
    "block": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Block(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.attn_norm = Norm(config)
        self.attn = Attention(config, rngs=rngs)
        self.mlp_norm = Norm(config)
        self.mlp = MLP(config, rngs=rngs)
        # Gemma 3: norms on each sublayer's output as well (None elsewhere)
        self.attn_post_norm = Norm(config) if config.post_norms else None
        self.mlp_post_norm = Norm(config) if config.post_norms else None
        self.parallel_residual = config.parallel_residual

    def __call__(self, x_BxTxD, **attn_kwargs):
        a, kv = self.attn(self.attn_norm(x_BxTxD), **attn_kwargs)
        if self.parallel_residual:
            return x_BxTxD + a + self.mlp(self.mlp_norm(x_BxTxD)), kv
        if self.attn_post_norm is not None:
            x = x_BxTxD + self.attn_post_norm(a)
            return x + self.mlp_post_norm(self.mlp(self.mlp_norm(x))), kv
        x = x_BxTxD + a
        return x + self.mlp(self.mlp_norm(x)), kv


def stack_blocks(blocks: list[Block]) -> Block:
    """One `Block` whose parameters are the blocks' stacked on a leading ``layers`` axis."""
    graphdef, _ = nnx.split(blocks[0])
    states = [nnx.split(block)[1] for block in blocks]

    def stack(*variables):
        names = variables[0].get_metadata().get("out_sharding") or ()
        value = jnp.stack([v.get_value() for v in variables])
        return variables[0].replace(value, out_sharding=("layers", *names))

    return nnx.merge(graphdef, jax.tree.map(stack, *states, is_leaf=is_variable))


def layer_slice(layers_state, i: int):
    """Layer ``i``'s parameters from a stacked state (static index: a slice, not a gather)."""
    return jax.tree.map(lambda x: x[i], layers_state)


def _remat(body, policy: str):
    if policy == "none":
        return body
    return jax.checkpoint(body, policy=_REMAT_POLICIES[policy], prevent_cse=False)


class TokenStats(NamedTuple):
    """`CausalLM.token_logprobs`' per-token results, each (B, N) and 0 / False under the mask."""

    logp_BxN: jax.Array  # log softmax(logits / T)[target], float32
    entropy_BxN: jax.Array | None  # entropy of softmax(logits / T) (with entropy=True)
    correct_BxN: jax.Array | None  # argmax of the logits == target (with accuracy=True)


class Transformer(nnx.Module):
    """Embeddings → blocks → final norm: the trunk shared by LM, reward and value models."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        pdt = jnp.dtype(config.param_dtype)
        init = normal_init(config.init_std)
        self.config = config
        self.embed = param(
            rngs, init, (config.vocab_size, config.hidden_size), ("vocab", "embed"), pdt
        )
        shape = (config.max_position_embeddings, config.hidden_size)
        self.pos_embed = (
            param(rngs, init, shape, ("positions", "embed"), pdt)
            if config.positions == "learned"
            else None
        )
        self.layers = stack_blocks([Block(config, rngs=rngs) for _ in range(config.num_layers)])
        self.final_norm = Norm(config)

    def __call__(
        self,
        tokens_BxT,
        *,
        positions_BxT,
        attn_mask_BxT,
        cache: KVCache | None = None,
        mask_BxTxT=None,
        blocks: tuple[Block, ...] | None = None,
    ):
        """Final-normed hidden states (B, T, D) and the updated cache (None without one).

        ``blocks`` (with a cache): the layers as `layer_blocks` returns them, sliced once
        outside a decode loop rather than in every step.

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
        if cfg.embed_scale:  # Gemma: √D, rounded to the compute dtype as HF does
            x = x * jnp.asarray(cfg.hidden_size**0.5, dtype)
        if self.pos_embed is not None:
            x = x + jnp.take(self.pos_embed[...], positions_BxT, axis=0).astype(dtype)
        sin_cos = rope_sin_cos(cfg, positions_BxT) if cfg.positions == "rope" else None
        # The sliding layers' own RoPE (Gemma 3), else theirs is everyone's.
        local_sin_cos = (
            rope_sin_cos(cfg, positions_BxT, local=True)
            if sin_cos is not None and cfg.local_rope_theta
            else sin_cos
        )
        attn_mask_BxT = attn_mask_BxT.astype(bool)
        graphdef, layers = nnx.split(self.layers)
        if cache is None:
            if mask_BxTxT is not None:
                mask_BxTxS = mask_BxTxT.astype(bool)
            else:
                causal_TxT = jnp.tril(jnp.ones((t, t), bool))
                mask_BxTxS = causal_TxT[None] & attn_mask_BxT[:, None, :]
            windows = cfg.layer_windows
            # Sliding windows by position, so a packed row's segments see what they would alone.
            near = lambda w: (positions_BxT[:, :, None] - positions_BxT[:, None, :]) < w
            if len(set(windows)) == 1:  # one attention for every layer
                if windows[0]:
                    mask_BxTxS = mask_BxTxS & near(windows[0])
                    sin_cos = local_sin_cos

                def body(x, layer):
                    x, _ = nnx.merge(graphdef, layer)(x, sin_cos=sin_cos, mask_BxTxS=mask_BxTxS)
                    return x, None

                xs = layers
            else:  # full and sliding layers interleaved: each layer's mask in the loop
                windowed_BxTxS = mask_BxTxS & near(cfg.sliding_window)

                def body(x, layer_and_sliding):
                    layer, sliding = layer_and_sliding
                    mask = jnp.where(sliding, windowed_BxTxS, mask_BxTxS)
                    sc = sin_cos
                    if local_sin_cos is not sin_cos:
                        sc = jax.tree.map(partial(jnp.where, sliding), local_sin_cos, sin_cos)
                    x, _ = nnx.merge(graphdef, layer)(x, sin_cos=sc, mask_BxTxS=mask)
                    return x, None

                xs = (layers, jnp.asarray([w > 0 for w in windows]))

            unroll = min(cfg.scan_unroll, cfg.num_layers)
            x, _ = lax.scan(_remat(body, cfg.remat), x, xs, unroll=unroll)
            return self.final_norm(x), None
        s = cache.valid_BxS.shape[1]
        if t > s:
            raise ValueError(f"{t} tokens do not fit a KV cache of {s} slots")
        valid_BxS = lax.dynamic_update_slice(cache.valid_BxS, attn_mask_BxT, (0, cache.end))
        query_slot_T = cache.end + jnp.arange(t)
        causal_TxS = jnp.arange(s)[None, :] <= query_slot_T[:, None]
        mask_BxTxS = causal_TxS[None] & valid_BxS[:, None, :]
        # Real tokens fill consecutive slots (prompts are left-padded), so slot distance is
        # position distance for every key the mask lets through.
        near_TxS = query_slot_T[:, None] - jnp.arange(s)[None, :] < cfg.sliding_window
        windowed_BxTxS = mask_BxTxS & near_TxS[None] if cfg.sliding_window else None
        new_k, new_v = [], []
        blocks = self.layer_blocks() if blocks is None else blocks
        for layer, k, v, w in zip(blocks, cache.k, cache.v, cfg.layer_windows, strict=True):
            x, (k, v) = layer(
                x,
                sin_cos=local_sin_cos if w else sin_cos,
                mask_BxTxS=windowed_BxTxS if w else mask_BxTxS,
                kv_cache=(k, v),
                write_at=cache.end,
            )
            new_k.append(k)
            new_v.append(v)
        cache = KVCache(k=tuple(new_k), v=tuple(new_v), valid_BxS=valid_BxS, end=cache.end + t)
        return self.final_norm(x), cache

    def layer_blocks(self) -> tuple[Block, ...]:
        """The L layers as separate `Block`s (static slices of the stacked parameters)."""
        graphdef, layers = nnx.split(self.layers)
        return tuple(
            nnx.merge(graphdef, layer_slice(layers, i)) for i in range(self.config.num_layers)
        )


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
            logits = jnp.einsum(
                "btd,vd->btv", h_BxTxD.astype(dtype), w_VxD, preferred_element_type=jnp.float32
            )
        else:
            w_DxV = self.lm_head.kernel[...].astype(dtype)
            logits = jnp.einsum(
                "btd,dv->btv", h_BxTxD.astype(dtype), w_DxV, preferred_element_type=jnp.float32
            )
        cap = self.config.final_softcap
        return cap * jnp.tanh(logits / cap) if cap else logits

    def token_logprobs(
        self,
        h_BxNxD,
        targets_BxN,
        mask_BxN,
        *,
        temperature=1.0,
        entropy: bool = False,
        accuracy: bool = False,
    ) -> TokenStats:
        """Per-token statistics of ``targets`` under the LM head on the hidden states that
        predict them — `losses.sequence_logprobs` (and `losses.entropy_from_logits`, and
        whether the argmax is the target) of ``self.logits(h)``, without B × N × V logits.

        Rows (B·N of them) go through the LM head in chunks of ``config.logprob_chunk`` (0:
        as many as fit `LOGPROB_CHUNK_ELEMENTS` logits), one chunk at a time under
        `jax.lax.map`; the backward pass recomputes each chunk's logits rather than keeping
        them. A batch that fits one chunk takes the unchunked path.
        """
        b, n = h_BxNxD.shape[:2]
        for name, arr in (("targets_BxN", targets_BxN), ("mask_BxN", mask_BxN)):
            if arr.shape != (b, n):
                raise ValueError(f"{name} has shape {arr.shape}; expected {(b, n)}")

        def one(h, targets, mask):
            logits = self.logits(h)
            logp, _ = sequence_logprobs(logits, targets, mask, temperature=temperature)
            ent = entropy_from_logits(logits, mask, temperature=temperature) if entropy else None
            correct = ((jnp.argmax(logits, axis=-1) == targets) & mask) if accuracy else None
            return TokenStats(logp, ent, correct)

        rows = b * n
        limit = self.config.logprob_chunk or max(
            1, LOGPROB_CHUNK_ELEMENTS // self.config.vocab_size
        )
        if rows <= limit:
            return one(h_BxNxD, targets_BxN, mask_BxN.astype(bool))
        count = -(-rows // limit)
        chunk = -(-rows // count)  # as many chunks, as even as they come
        pad = count * chunk - rows

        def chunked(x, fill):
            x = x.reshape(rows, *x.shape[2:])
            x = jnp.concatenate([x, jnp.full((pad, *x.shape[1:]), fill, x.dtype)])
            return x.reshape(count, 1, chunk, *x.shape[1:])

        args = (chunked(h_BxNxD, 0), chunked(targets_BxN, 0), chunked(mask_BxN.astype(bool), 0))
        stats = lax.map(jax.checkpoint(lambda a: one(*a), prevent_cse=False), args)
        unchunked = lambda x: None if x is None else x.reshape(-1)[:rows].reshape(b, n)
        return TokenStats(*map(unchunked, stats))

    def decode(self, tokens_BxT, *, positions_BxT, attn_mask_BxT, cache: KVCache, blocks=None):
        """Logits (B, T, V) of `tokens` appended at the cache's end, and the updated cache
        (``blocks``: `Transformer.layer_blocks`, taken once outside a decode loop)."""
        h, cache = self.trunk(
            tokens_BxT,
            positions_BxT=positions_BxT,
            attn_mask_BxT=attn_mask_BxT,
            cache=cache,
            blocks=blocks,
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
