"""Static sequence lengths: which bucket an example goes to, and how a too-long one is cut.

A jitted step traces once per input shape, so sequences are padded to one of a few fixed
lengths (the buckets) rather than to the longest in each batch. Each example goes to the
smallest bucket that holds it.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Fit:
    """Where an example goes: its bucket length and how many prompt tokens it keeps."""

    length: int | None  # None: it fits no bucket and is dropped
    prompt_keep: int  # prompt tokens kept (from the right); < the prompt's length if truncated
    detail: str = ""  # why it was dropped or truncated, for the report

    @property
    def truncated(self) -> bool:
        return self.length is not None and bool(self.detail)


def fit_to_bucket(
    prompt_len: int, response_lens: Sequence[int], bucket_lengths: Sequence[int], *, too_long: str
) -> Fit:
    """The smallest bucket holding prompt + the longest response (all share one prompt).

    Too long for the largest bucket: with ``too_long="drop"`` the example is dropped; with
    ``"truncate"`` the prompt loses tokens from the left until it fits, but keeps at least one
    token — the first response token is predicted from the last prompt token — so a response
    that alone fills the largest bucket is dropped either way.
    """
    longest = max(response_lens)
    total = prompt_len + longest
    i = bisect.bisect_left(bucket_lengths, total)
    if i < len(bucket_lengths):
        return Fit(bucket_lengths[i], prompt_len)
    largest = bucket_lengths[-1]
    detail = f"{prompt_len} prompt + {longest} response tokens > the largest bucket {largest}"
    if too_long == "truncate":
        keep = largest - longest
        if keep >= 1:
            return Fit(largest, keep, f"{detail}; prompt cut to its last {keep} tokens")
        detail += "; the response alone does not fit"
    return Fit(None, 0, detail)


def truncate_prompt(prompt_ids: np.ndarray, keep: int, *, bos_id: int | None) -> np.ndarray:
    """The last ``keep`` tokens of the prompt, with a leading BOS kept in front when present."""
    if keep >= len(prompt_ids):
        return prompt_ids
    if bos_id is not None and keep >= 2 and len(prompt_ids) and prompt_ids[0] == bos_id:
        return np.concatenate([prompt_ids[:1], prompt_ids[len(prompt_ids) - keep + 1 :]])
    return prompt_ids[len(prompt_ids) - keep :]
