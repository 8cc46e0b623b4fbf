"""Supervised fine-tuning: next-token loss on response tokens only.

    L = −(1/N) Σ_{b,t} m_{b,t+1} log π(y_{b,t+1} | y_{b,≤t}),   N = Σ m

Batch keys (``rlhf_jax.data``; right-padded, static bucket length T):
    tokens_BxT, positions_BxT, attn_mask_BxT, loss_mask_BxT
``loss_mask`` marks the tokens to predict; logits at t predict token t + 1, hence the shift.
With the optional window keys (``window_BxW``, ``window_mask_BxW``; `rlhf_jax.data.collate`) the
LM head runs only at the W positions that predict response tokens: the same loss, and B×W
rather than B×T vocabulary projections and log-softmaxes.
The mean is over tokens of the whole (accumulated) batch, exactly: each micro-batch reports its
token count as its weight.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from rlhf_jax import losses


def response_logits(graphdef, params, rest, batch):
    """(logits (B, N, V), targets (B, N), mask (B, N)): the LM's predictions of the response.

    Without window keys N = T − 1: logits at positions 0..T−2 against tokens 1..T−1 under
    ``loss_mask[:, 1:]``. With ``window_BxW`` N = W: the hidden states are gathered at
    the window's positions first, so the LM head sees only those.
    """
    model = nnx.merge(graphdef, params, rest)
    tokens = batch["tokens_BxT"]
    h = model.hidden_states(
        tokens, positions_BxT=batch["positions_BxT"], attn_mask_BxT=batch["attn_mask_BxT"]
    )
    window = batch.get("window_BxW")
    if window is None:
        return model.logits(h[:, :-1]), tokens[:, 1:], batch["loss_mask_BxT"][:, 1:]
    h = jnp.take_along_axis(h, window[:, :, None], axis=1)
    targets = jnp.take_along_axis(tokens, window + 1, axis=1)
    return model.logits(h), targets, batch["window_mask_BxW"]


def sft_loss(params, frozen, batch, rng, *, graphdef):
    """Mean token NLL over response tokens; weight = number of those tokens."""
    del rng  # no dropout: RLHF fine-tuning runs deterministic forwards
    logits, targets, mask = response_logits(graphdef, params, frozen["rest"], batch)
    mask = mask.astype(bool)
    token_logp, _ = losses.sequence_logprobs(logits, targets, mask)
    count = jnp.sum(mask, dtype=jnp.float32)
    nll = -jnp.sum(token_logp) / jnp.maximum(count, 1.0)
    correct = (jnp.argmax(logits, axis=-1) == targets) & mask
    metrics = {
        "nll": nll,
        "token_accuracy": jnp.sum(correct, dtype=jnp.float32) / jnp.maximum(count, 1.0),
    }
    return nll, (count, metrics)
