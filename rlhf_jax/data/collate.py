"""Examples → a batch: a dict of NumPy arrays with static shapes, right-padded.

Letters: B batch (rows on this host), K responses per prompt, T the bucket length.

Keys (``prefix`` is "" for SFT, "chosen_" / "rejected_" for preferences):
    {prefix}tokens_BxT      int32  prompt tokens, response tokens (EOS last), then pad_id
    {prefix}loss_mask_BxT   bool   True where the token is a response token (EOS included)
    {prefix}attn_mask_BxT   bool   True at real tokens (prompt and response), False at padding
    {prefix}positions_BxT   int32  cumsum(attn_mask) - 1, clipped at 0 (as
                                   `rlhf_jax.models.positions_from_mask`)
    example_mask_B          bool   False for rows that only fill a static batch (all masks 0)
    example_id_B            int32  index of the example in its TokenizedDataset; -1 for filler
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


def collate(dataset: TokenizedDataset, indices_B: Sequence[int], *, length: int) -> dict:
    """The batch of the examples at ``indices_B`` padded to ``length`` (see the module doc)."""
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
        for slot, prefix in enumerate(("chosen_", "rejected_")):
            batch.update(
                {
                    f"{prefix}{name}_BxT": np.ascontiguousarray(x[:, slot])
                    for name, x in fields.items()
                }
            )
    else:
        batch.update({f"{name}_BxT": x[:, 0] for name, x in fields.items()})  # contiguous: K = 1
    return batch
