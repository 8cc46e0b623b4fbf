"""Where a batch's response tokens are predicted: the positions the LM head needs.

Logits at position t predict token t + 1. Without window keys the predictions are positions
0..T−2 against tokens 1..T−1 under ``loss_mask[:, 1:]``. With the window keys of
`rlhf_jax.data.collate` (``window_BxW``, ``window_mask_BxW``) they are the W positions that
predict response tokens: the same loss, and B×W rather than B×T vocabulary projections and
log-softmaxes.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from rlhf_jax.models import lora


def response_hidden(h_BxTxD, batch):
    """(h (B, N, D), targets (B, N), mask (B, N)): the hidden states that predict the response
    (N = T − 1, or N = W with the window keys), the tokens they predict, and which are real."""
    tokens = batch["tokens_BxT"]
    window = batch.get("window_BxW")
    if window is None:
        return h_BxTxD[:, :-1], tokens[:, 1:], batch["loss_mask_BxT"][:, 1:]
    h = jnp.take_along_axis(h_BxTxD, window[:, :, None], axis=1)
    targets = jnp.take_along_axis(tokens, window + 1, axis=1)
    return h, targets, batch["window_mask_BxW"]


def response_logprobs(graphdef, params, rest, batch, *, dropout_key=None, **stats):
    """(`models.TokenStats` (B, N), mask (B, N)): the LM's log-probs of the response tokens
    (``stats``: `CausalLM.token_logprobs`' options, e.g. ``accuracy=True``; ``dropout_key``:
    the adapters' dropout, `lora.with_dropout`)."""
    model = lora.with_dropout(nnx.merge(graphdef, params, rest), dropout_key)
    h = model.hidden_states(
        batch["tokens_BxT"],
        positions_BxT=batch["positions_BxT"],
        attn_mask_BxT=batch["attn_mask_BxT"],
    )
    h, targets, mask = response_hidden(h, batch)
    mask = mask.astype(bool)
    return model.token_logprobs(h, targets, mask, **stats), mask
