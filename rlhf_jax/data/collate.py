"""Examples → a batch: a dict of NumPy arrays with static shapes, right-padded.

Letters: B batch (rows on this host), K responses per prompt, T the bucket length.

Keys (``prefix`` is "" for SFT, "chosen_" / "rejected_" for preferences):
    {prefix}tokens_BxT      int32  prompt tokens, response tokens (EOS last), then pad_id
    {prefix}loss_mask_BxT   bool   True where the token is a response token (EOS included)
    {prefix}attn_mask_BxT   bool   True at real tokens (prompt and response), False at padding
    {prefix}positions_BxT   int32  cumsum(attn_mask) - 1, clipped at 0 (as
                                   `rlhf_jax.models.positions_from_mask`)
    example_mask_B          bool   False for rows that only fill a static batch (all masks 0)
    label_B                 float32  preferences whose data has soft labels (chosen_probability):
                                   P(chosen ≻ rejected), 1.0 for rows without one
    example_id_B            int32  index of the example in its TokenizedDataset; -1 for filler
With a response window W (``collate(..., window=W)``, SFT and preferences only):
    {prefix}window_BxW      int32  the positions whose logits predict the response tokens:
                                   row b's response starts at p_b, so window[b, j] = p_b - 1 + j
                                   for j < its length (EOS included), 0 after
    {prefix}window_mask_BxW bool   True at the slots that hold a response position
A step then computes logits on B×W positions instead of B×T
(``rlhf_jax.training.responses.response_logprobs``): W is the smallest bucket length that
holds the batch's longest response (`response_window`), so a long prompt with a short
response does not pay for vocabulary projections it does not use.
Rankings hold the K responses of a prompt on an extra axis: tokens_BxKxT, loss_mask_BxKxT,
attn_mask_BxKxT, positions_BxKxT, plus mask_BxK (True where response k exists) and ranks_BxK
(int32, 0 = best; 0 under mask_BxK False).

Shift convention: the loss mask marks the tokens to be *predicted*. ``logits[:, t]`` predicts
``tokens[:, t + 1]``, so a step computes its loss from ``logits[:, :-1]`` against
``tokens[:, 1:]`` with ``loss_mask[:, 1:]``. Every sequence starts with at least one prompt
token, so ``loss_mask[:, 0]`` is always False and no response token is lost to the shift.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rlhf_jax.data.encoding import TokenizedDataset


def _pack(dataset, indices_B, length, num_responses):
    """Arrays of shape (B, K, T) for the examples at ``indices_B`` (-1 = filler row)."""
    b, k, t = len(indices_B), num_responses, length
    tokens = np.full((b, k, t), dataset.pad_id, np.int32)
    loss_mask = np.zeros((b, k, t), bool)
    attn_mask = np.zeros((b, k, t), bool)
    mask_BxK = np.zeros((b, k), bool)
    ranks_BxK = np.zeros((b, k), np.int32)
    for row, index in enumerate(indices_B):
        if index < 0:
            continue
        example = dataset.examples[index]
        if example.length > length:
            raise ValueError(f"example {index} belongs to bucket {example.length}, not {length}")
        p = len(example.prompt_ids)
        for slot, response in enumerate(example.response_ids):
            end = p + len(response)
            tokens[row, slot, :p] = example.prompt_ids
            tokens[row, slot, p:end] = response
            loss_mask[row, slot, p:end] = True
            attn_mask[row, slot, :end] = True
            mask_BxK[row, slot] = True
        if example.ranks is not None:
            ranks_BxK[row, : len(example.ranks)] = example.ranks
    positions = np.maximum(np.cumsum(attn_mask, axis=-1, dtype=np.int32) - 1, 0)
    return tokens, loss_mask, attn_mask, positions, mask_BxK, ranks_BxK


def response_window(
    dataset: TokenizedDataset, indices: Sequence[int], *, length: int
) -> int | None:
    """The window W for a batch of the examples at ``indices`` padded to ``length``.

    The smallest of the dataset's bucket lengths that holds the longest response among them
    (EOS included), or None when that is not shorter than the T − 1 positions a full-length
    window has (then the step takes every position). Call it with the *global* batch's indices
    so that every host of a multi-host run picks the same W.
    """
    longest = max(
        (
            len(r)
            for i in np.asarray(indices, np.int64)
            if i >= 0
            for r in dataset.examples[i].response_ids
        ),
        default=1,
    )
    width = next((w for w in dataset.bucket_lengths if w >= longest), length)
    return width if width < length - 1 else None


def window_indices(loss_mask_BxT: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(window_BxW, window_mask_BxW) of right-padded rows whose response is the contiguous run
    of ``loss_mask``: slot j of row b is position p_b − 1 + j, whose logits predict token p_b + j.
    """
    loss_mask_BxT = np.asarray(loss_mask_BxT, bool)
    counts = loss_mask_BxT.sum(axis=-1)
    if np.any(counts > width):
        row = int(np.argmax(counts > width))
        raise ValueError(
            f"row {row} has {int(counts[row])} response tokens; the window holds {width}"
        )
    starts = np.argmax(loss_mask_BxT, axis=-1)  # first response token (0 for empty rows)
    if np.any(loss_mask_BxT[:, 0]):
        raise ValueError("loss_mask[:, 0] is True: a response token has no prompt to predict it")
    slots = np.arange(width)[None, :]
    mask = slots < counts[:, None]
    window = np.where(mask, starts[:, None] - 1 + slots, 0).astype(np.int32)
    spans = np.where(mask, window + 1, 0)
    if not np.array_equal(np.take_along_axis(loss_mask_BxT, spans, axis=1) & mask, mask):
        raise ValueError("loss_mask is not one contiguous run per row; no response window")
    return window, mask


def collate(
    dataset: TokenizedDataset,
    indices_B: Sequence[int],
    *,
    length: int,
    window: int | None = None,
) -> dict:
    """The batch of the examples at ``indices_B`` padded to ``length`` (see the module doc);
    with ``window`` (SFT and preferences), the response-window keys too."""
    indices_B = np.asarray(indices_B, np.int64)
    tokens, loss_mask, attn_mask, positions, mask_BxK, ranks_BxK = _pack(
        dataset, indices_B, length, dataset.num_responses
    )
    batch = {"example_mask_B": indices_B >= 0, "example_id_B": indices_B.astype(np.int32)}
    fields = {"tokens": tokens, "loss_mask": loss_mask, "attn_mask": attn_mask}
    fields["positions"] = positions
    if dataset.kind == "ranking":
        batch.update({f"{name}_BxKxT": x for name, x in fields.items()})
        batch.update(mask_BxK=mask_BxK, ranks_BxK=ranks_BxK)
    elif dataset.kind == "preference":
        if dataset.soft_labels:
            batch["label_B"] = np.asarray(
                [1.0 if i < 0 or (q := dataset.examples[i].label) is None else q
                 for i in indices_B], np.float32,
            )  # fmt: skip
        for slot, prefix in enumerate(("chosen_", "rejected_")):
            batch.update(
                {
                    f"{prefix}{name}_BxT": np.ascontiguousarray(x[:, slot])
                    for name, x in fields.items()
                }
            )
    else:
        batch.update({f"{name}_BxT": x[:, 0] for name, x in fields.items()})  # contiguous: K = 1
    if window is not None and dataset.kind != "ranking":
        prefixes = ("chosen_", "rejected_") if dataset.kind == "preference" else ("",)
        for prefix in prefixes:
            idx, mask = window_indices(batch[f"{prefix}loss_mask_BxT"], window)
            batch[f"{prefix}window_BxW"], batch[f"{prefix}window_mask_BxW"] = idx, mask
    return batch
