"""Supervised fine-tuning: next-token loss on response tokens only.

    L = −(1/N) Σ_{b,t} m_{b,t+1} log π(y_{b,t+1} | y_{b,≤t}),   N = Σ m

Batch keys (``rlhf_jax.data``; right-padded, static bucket length T):
    tokens_BxT, positions_BxT, attn_mask_BxT, loss_mask_BxT
``loss_mask`` marks the tokens to predict; logits at t predict token t + 1, hence the shift.
With the optional window keys (``window_BxW``, ``window_mask_BxW``) the LM head runs only at
the W positions that predict response tokens (`responses.response_logits`).
The mean is over tokens of the whole (accumulated) batch, exactly: each micro-batch reports its
token count as its weight.

SFT has no options of its own: its run takes a plain `PhaseConfig`.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp

from rlhf_jax import losses
from rlhf_jax.training.phase import Phase, PhaseConfig, PhaseInputs, PhaseParts
from rlhf_jax.training.responses import response_logits


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


def setup(inputs: PhaseInputs) -> PhaseParts:
    return PhaseParts(loss_fn=functools.partial(sft_loss, graphdef=inputs.model.graphdef))


PHASE = Phase(name="sft", config_type=PhaseConfig, data_kinds=("sft",), head="lm", setup=setup)
