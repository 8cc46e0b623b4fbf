"""Supervised fine-tuning: next-token loss on response tokens only.

    L = −(1/N) Σ_{b,t} m_{b,t+1} log π(y_{b,t+1} | y_{b,≤t}),   N = Σ m

Batch keys (``rlhf_jax.data``; right-padded, static bucket length T):
    tokens_BxT, positions_BxT, attn_mask_BxT, loss_mask_BxT
``loss_mask`` marks the tokens to predict; logits at t predict token t + 1, hence the shift.
With the optional window keys (``window_BxW``, ``window_mask_BxW``) the LM head runs only at
the W positions that predict response tokens (`responses.response_logprobs`), in chunks of
rows (`CausalLM.token_logprobs`).
The mean is over tokens of the whole (accumulated) batch, exactly: each micro-batch reports its
token count as its weight.

SFT has no options of its own: its run takes a plain `PhaseConfig`.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp

from rlhf_jax.training.phase import Phase, PhaseConfig, PhaseInputs, PhaseParts
from rlhf_jax.training.responses import response_logprobs


def sft_loss(params, frozen, batch, rng, *, graphdef):
    """Mean token NLL over response tokens; weight = number of those tokens."""
    # The only randomness: LoRA adapters' dropout, when configured (`lora.with_dropout`).
    stats, mask = response_logprobs(
        graphdef, params, frozen["rest"], batch, accuracy=True, dropout_key=rng
    )
    count = jnp.sum(mask, dtype=jnp.float32)
    nll = -jnp.sum(stats.logp_BxN) / jnp.maximum(count, 1.0)
    correct = stats.correct_BxN
    metrics = {
        "nll": nll,
        "token_accuracy": jnp.sum(correct, dtype=jnp.float32) / jnp.maximum(count, 1.0),
    }
    return nll, (count, metrics)


def setup(inputs: PhaseInputs) -> PhaseParts:
    return PhaseParts(loss_fn=functools.partial(sft_loss, graphdef=inputs.model.graphdef))


PHASE = Phase(name="sft", config_type=PhaseConfig, data_kinds=("sft",), head="lm", setup=setup)
