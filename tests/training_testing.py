"""Tiny models and synthetic batches for the training-phase tests."""

from __future__ import annotations

import numpy as np
from flax import nnx

from rlhf_jax import placement
from rlhf_jax.data import window_indices
from rlhf_jax.models import CausalLM, ModelConfig, ScalarModel
from rlhf_jax.training import dpo, reward
from rlhf_jax.training import state as state_lib

# The loss functions' configs with the two-row (unpacked) pair forward, as in the reference
# tests; the phases' default packs pairs (share_prompt=True).
RM = reward.RewardLossConfig(share_prompt=False)
DPO = dpo.DPOLossConfig(share_prompt=False)

TINY = ModelConfig(
    model_type="llama",
    vocab_size=64,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    mlp_dim=64,
    norm="rms",
    norm_eps=1e-5,
    activation="silu",
    gated_mlp=True,
    positions="rope",
    max_position_embeddings=64,
    rotary_dim=8,
)


def tiny_lm(seed: int = 0, config: ModelConfig = TINY) -> CausalLM:
    return CausalLM(config, rngs=nnx.Rngs(seed))


def tiny_reward_model(seed: int = 0, config: ModelConfig = TINY) -> ScalarModel:
    return ScalarModel(config, kind="reward", rngs=nnx.Rngs(seed))


def _sequences(rng, batch, length, prompt_len, vocab):
    """Right-padded rows: prompt, then a response of random length, then padding."""
    tokens = rng.integers(1, vocab, (batch, length)).astype(np.int32)
    response_len = rng.integers(1, length - prompt_len + 1, batch)
    total = prompt_len + response_len
    positions = np.broadcast_to(np.arange(length), (batch, length))
    attn = positions < total[:, None]
    loss = attn & (positions >= prompt_len)
    tokens = np.where(attn, tokens, 0)
    return {
        "tokens_BxT": tokens,
        "positions_BxT": np.where(attn, positions, 0).astype(np.int32),
        "attn_mask_BxT": attn,
        "loss_mask_BxT": loss,
    }


def sft_batch(seed: int, batch: int = 8, length: int = 12, vocab: int = 64):
    return _sequences(np.random.default_rng(seed), batch, length, 3, vocab)


def windowed_pair_batch(seed: int, batch: int = 8, length: int = 12, vocab: int = 64):
    """`pair_batch` with the response-window keys the data layer adds (W = 9 of 11 positions)."""
    out = pair_batch(seed, batch, length, vocab)
    for side in ("chosen", "rejected"):
        window, mask = window_indices(out[f"{side}_loss_mask_BxT"], length - 3)
        out[f"{side}_window_BxW"], out[f"{side}_window_mask_BxW"] = window, mask
    return out


def pair_batch(seed: int, batch: int = 8, length: int = 12, vocab: int = 64, padded_rows=0):
    rng = np.random.default_rng(seed)
    out = {}
    for side in ("chosen", "rejected"):
        for key, value in _sequences(rng, batch, length, 3, vocab).items():
            out[f"{side}_{key}"] = value
    # Chosen and rejected share the prompt.
    out["rejected_tokens_BxT"][:, :3] = out["chosen_tokens_BxT"][:, :3]
    mask = np.ones(batch, np.float32)
    if padded_rows:
        mask[-padded_rows:] = 0
    out["example_mask_B"] = mask
    return out


def init_state(model_fn, tx, mesh, *, seed=0, reference_fn=None):
    """``(state, shardings, graphdef)``: ``model_fn()`` placed on ``mesh`` and its train state;
    ``reference_fn()`` (a model), when given, supplies the frozen reference parameters."""
    model = placement.place_module(model_fn, mesh)
    reference = None
    if reference_fn is not None:
        reference = placement.place_module(reference_fn, mesh).params
    state, shardings = state_lib.init_train_state(model, tx, seed=seed, frozen_extra=reference)
    return state, shardings, model.graphdef
