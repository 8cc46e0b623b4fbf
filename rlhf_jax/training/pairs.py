"""A preference pair as one packed row: [chosen row | rejected response], the prompt computed once.

Chosen and rejected share their prompt, and under causal attention the prompt's hidden states do
not depend on what follows it, so they are the same in both rows. A pair batch (right-padded to
T, with the response-window keys of `rlhf_jax.data.collate`, window W) becomes B rows of
L = T + W tokens:

    [ prompt | chosen response | pad ]  [ rejected response | pad ]
      positions 0 … T−1 of the chosen row   its W window slots

The rejected tokens attend to the prompt and to each other (causally), never to the chosen
response; the chosen row attends as usual. Positions are the original ones (the rejected
response starts at the prompt length again), so every real token sees exactly the keys, at the
same positions, that it sees in its own unpacked row: the results equal the unpacked forward's
up to float summation order. The trunk runs on B·(T + W) tokens instead of 2·B·T, e.g. 25% fewer
when the prompt is as long as the responses, more with longer prompts.

Needs: both prompts equal (tokens and length; `rlhf_jax.data` batches always are, since both
responses are written after one prompt), and the window keys. ``unshared_prompts`` counts the
real pairs that break the first condition, so a hand-made batch cannot pass unnoticed.
"""

from __future__ import annotations

import jax.numpy as jnp

from rlhf_jax.models.heads import last_valid_index

WINDOW_KEYS = (
    "chosen_window_BxW",
    "chosen_window_mask_BxW",
    "rejected_window_BxW",
    "rejected_window_mask_BxW",
)


def can_pack(batch) -> bool:
    """Whether ``batch`` carries what `pack` needs (the response-window keys of both sides)."""
    return all(key in batch for key in WINDOW_KEYS)


def pack(batch) -> dict:
    """The packed rows of a pair batch and where each side's results sit in them.

    Returns a dict of:
        tokens_BxL, positions_BxL, attn_mask_BxL, mask_BxLxL   the model's inputs
        chosen_scores_at_B, rejected_scores_at_B   index of each side's last token
        chosen_response_BxL, rejected_response_BxL   each side's response tokens
        {chosen,rejected}_predictors_BxW   positions whose logits predict response token j
        {chosen,rejected}_targets_BxW, {chosen,rejected}_mask_BxW   those tokens, real slots
        unshared_prompts   () float32, real pairs whose prompts differ (must be 0)
    """
    missing = [key for key in WINDOW_KEYS if key not in batch]
    if missing:
        raise ValueError(f"packing a pair batch needs the response-window keys; missing {missing}")
    c_tokens, r_tokens = batch["chosen_tokens_BxT"], batch["rejected_tokens_BxT"]
    c_attn = batch["chosen_attn_mask_BxT"].astype(bool)
    c_loss = batch["chosen_loss_mask_BxT"].astype(bool)
    c_win, c_wmask = batch["chosen_window_BxW"], batch["chosen_window_mask_BxW"].astype(bool)
    r_win, r_wmask = batch["rejected_window_BxW"], batch["rejected_window_mask_BxW"].astype(bool)
    b, t = c_tokens.shape
    w = r_win.shape[1]
    if c_win.shape != (b, w):
        raise ValueError(
            f"chosen_window_BxW has shape {c_win.shape}; expected {(b, w)} like rejected's"
        )
    length = t + w

    # Slot j of the rejected window is position p − 1 + j, predicting response token p + j.
    r_at = lambda x: jnp.take_along_axis(x, r_win + 1, axis=1)
    r_resp_tokens = jnp.where(r_wmask, r_at(r_tokens), 0)
    tokens = jnp.concatenate([c_tokens, r_resp_tokens.astype(c_tokens.dtype)], axis=1)
    r_positions = jnp.where(r_wmask, r_at(batch["rejected_positions_BxT"]), 0)
    positions = jnp.concatenate([batch["chosen_positions_BxT"], r_positions], axis=1)
    valid = jnp.concatenate([c_attn, r_wmask], axis=1)
    chosen_response = jnp.concatenate([c_loss, jnp.zeros((b, w), bool)], axis=1)
    rejected_response = jnp.concatenate([jnp.zeros((b, t), bool), r_wmask], axis=1)
    idx = jnp.arange(length)
    causal = idx[:, None] >= idx[None, :]
    rejected_query = idx >= t
    mask = (
        causal[None]
        & valid[:, None, :]
        & ~(rejected_query[None, :, None] & chosen_response[:, None, :])
    )

    # Rejected token j is predicted by the last prompt position (j = 0: it lies in the chosen
    # row, which holds the same prompt) or by the packed rejected token j − 1.
    slots = jnp.arange(w)[None, :]
    r_pred = jnp.where(slots == 0, r_win[:, :1], t + slots - 1)
    r_pred = jnp.where(r_wmask, r_pred, 0).astype(jnp.int32)

    # Real pairs whose prompts differ in length (first response position) or in a token.
    prompt = c_attn & ~c_loss
    real = c_wmask[:, 0] | r_wmask[:, 0]
    differ = (c_win[:, 0] != r_win[:, 0]) | jnp.any(prompt & (c_tokens != r_tokens), axis=1)
    return {
        "tokens_BxL": tokens,
        "positions_BxL": positions,
        "attn_mask_BxL": valid,
        "mask_BxLxL": mask,
        "chosen_scores_at_B": last_valid_index(c_attn),
        "rejected_scores_at_B": t + last_valid_index(r_wmask),
        "chosen_response_BxL": chosen_response,
        "rejected_response_BxL": rejected_response,
        "chosen_predictors_BxW": jnp.where(c_wmask, c_win, 0).astype(jnp.int32),
        "chosen_targets_BxW": jnp.take_along_axis(c_tokens, c_win + 1, axis=1),
        "chosen_mask_BxW": c_wmask,
        "rejected_predictors_BxW": r_pred,
        "rejected_targets_BxW": r_resp_tokens,
        "rejected_mask_BxW": r_wmask,
        "unshared_prompts": jnp.sum(real & differ, dtype=jnp.float32),
    }
