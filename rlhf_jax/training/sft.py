"""Supervised fine-tuning: next-token loss on response tokens only.

    L = −(1/N) Σ_{b,t} m_{b,t+1} log π(y_{b,t+1} | y_{b,≤t}),   N = Σ m

Batch keys (``rlhf_jax.data``; right-padded, static bucket length T):
    tokens_BxT, positions_BxT, attn_mask_BxT, loss_mask_BxT
``loss_mask`` marks the tokens to predict; logits at t predict token t + 1, hence the shift.
The mean is over tokens of the whole (accumulated) batch, exactly: each micro-batch reports its
token count as its weight.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from rlhf_jax import losses


def lm_forward(graphdef, params, rest, tokens_BxT, positions_BxT, attn_mask_BxT):
    model = nnx.merge(graphdef, params, rest)
    return model(tokens_BxT, positions_BxT=positions_BxT, attn_mask_BxT=attn_mask_BxT)


def response_logprobs(logits_BxTxV, tokens_BxT, loss_mask_BxT, *, temperature: float = 1.0):
    """Shifted per-token and per-sequence log-probs of the tokens under ``loss_mask``."""
    return losses.sequence_logprobs(
        logits_BxTxV[:, :-1],
        tokens_BxT[:, 1:],
        loss_mask_BxT[:, 1:],
        temperature=temperature,
    )


def sft_loss(params, frozen, batch, rng, *, graphdef):
    """Mean token NLL over response tokens; weight = number of those tokens."""
    del rng  # no dropout: RLHF fine-tuning runs deterministic forwards
    logits = lm_forward(
        graphdef,
        params,
        frozen["rest"],
        batch["tokens_BxT"],
        batch["positions_BxT"],
        batch["attn_mask_BxT"],
    )
    mask_BxT = batch["loss_mask_BxT"][:, 1:].astype(bool)
    token_logp, _ = response_logprobs(logits, batch["tokens_BxT"], batch["loss_mask_BxT"])
    count = jnp.sum(mask_BxT, dtype=jnp.float32)
    nll = -jnp.sum(token_logp) / jnp.maximum(count, 1.0)
    correct = (jnp.argmax(logits[:, :-1], axis=-1) == batch["tokens_BxT"][:, 1:]) & mask_BxT
    metrics = {
        "nll": nll,
        "token_accuracy": jnp.sum(correct, dtype=jnp.float32) / jnp.maximum(count, 1.0),
    }
    return nll, (count, metrics)
