"""A preference pair's one forward: packed as one row with the prompt computed once, or as two rows.

    fwd = forward(apply, batch, share_prompt=True)   # apply(tokens, positions, attn, mask)
    chosen_B, rejected_B = last_token(fwd)            # reward model: the score at each end
    h_2BxWxD, targets, mask, lengths = response_hidden(fwd)   # DPO: what predicts each response

`forward` packs when it can (``share_prompt`` and the window keys) and otherwise concatenates
chosen and rejected on the batch axis; the readers return the same arrays either way, so the
reward model and DPO never branch on the layout.

The packed row: [chosen row | rejected response].

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

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rlhf_jax import losses
from rlhf_jax.losses import last_valid_index
from rlhf_jax.models import at_last_valid
from rlhf_jax.training import responses

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


def concat_pairs(batch, field: str):
    """``chosen_<field>`` and ``rejected_<field>`` stacked on the batch axis (2B, ...)."""
    return jnp.concatenate([batch[f"chosen_{field}"], batch[f"rejected_{field}"]], axis=0)


Apply = Callable[[jax.Array, jax.Array, jax.Array, jax.Array | None], jax.Array]


class PairForward(NamedTuple):
    """A pair batch's one forward, and what the readers need to find each side in it."""

    out: jax.Array  # per-token outputs: (B, L, ...) packed, (2B, T, ...) concatenated
    batch: dict  # the pair batch
    packed: dict | None  # `pack`'s indices, or None for the concatenated rows
    unshared_prompts: jax.Array | None  # () float32 with share_prompt (0 unpacked), else None


def forward(apply: Apply, batch, *, share_prompt: bool) -> PairForward:
    """Runs ``apply(tokens, positions, attn_mask, mask_BxTxT)`` once over both sides.

    With ``share_prompt`` and the window keys: one packed row per pair (``mask_BxTxT`` the
    pair's attention mask); else chosen and rejected concatenated (``mask_BxTxT`` None: causal).
    """
    if share_prompt and can_pack(batch):
        p = pack(batch)
        out = apply(p["tokens_BxL"], p["positions_BxL"], p["attn_mask_BxL"], p["mask_BxLxL"])
        return PairForward(out, batch, p, p["unshared_prompts"])
    out = apply(
        concat_pairs(batch, "tokens_BxT"),
        concat_pairs(batch, "positions_BxT"),
        concat_pairs(batch, "attn_mask_BxT"),
        None,
    )
    # The same outputs whichever path a batch takes (a batch without a window cannot pack).
    unshared = jnp.zeros((), jnp.float32) if share_prompt else None
    return PairForward(out, batch, None, unshared)


def _split(x_2B, fwd: PairForward):
    n = fwd.batch["chosen_tokens_BxT"].shape[0]
    return x_2B[:n], x_2B[n:]


def last_token(fwd: PairForward):
    """(chosen_B, rejected_B): the output at each side's last valid token."""
    if fwd.packed is not None:
        at = lambda s: jnp.take_along_axis(fwd.out, fwd.packed[f"{s}_scores_at_B"][:, None], 1)
        return at("chosen")[:, 0], at("rejected")[:, 0]
    return _split(at_last_valid(fwd.out, concat_pairs(fwd.batch, "attn_mask_BxT")), fwd)


def response_mean(fwd: PairForward):
    """(chosen_B, rejected_B): the output averaged over each side's response tokens."""
    if fwd.packed is not None:
        mean = lambda s: losses.masked_mean(fwd.out, fwd.packed[f"{s}_response_BxL"], axis=-1)
        return mean("chosen"), mean("rejected")
    response = concat_pairs(fwd.batch, "loss_mask_BxT").astype(bool)
    return _split(losses.masked_mean(fwd.out, response, axis=-1), fwd)


def response_hidden(fwd: PairForward):
    """(h (2B, N, D), targets (2B, N), mask (2B, N), lengths (2B,) float32): the outputs that
    predict each response token, chosen rows first, and each response's length in tokens."""
    if fwd.packed is not None:
        p = fwd.packed
        both = lambda key: jnp.concatenate([p[f"chosen_{key}"], p[f"rejected_{key}"]])
        at = lambda s: jnp.take_along_axis(fwd.out, p[f"{s}_predictors_BxW"][..., None], 1)
        mask = both("mask_BxW")
        h = jnp.concatenate([at("chosen"), at("rejected")])
        return h, both("targets_BxW"), mask, jnp.sum(mask, axis=-1, dtype=jnp.float32)
    fields = ["tokens_BxT", "loss_mask_BxT"]
    if "chosen_window_BxW" in fwd.batch:
        fields += ["window_BxW", "window_mask_BxW"]  # only the responses' window of positions
    rows = {field: concat_pairs(fwd.batch, field) for field in fields}
    h, targets, mask = responses.response_hidden(fwd.out, rows)
    lengths = jnp.sum(rows["loss_mask_BxT"][:, 1:], axis=-1, dtype=jnp.float32)
    return h, targets, mask, lengths
