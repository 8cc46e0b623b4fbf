"""The data settings of a training phase (a typed, frozen copy of the ml-collections config)."""

from __future__ import annotations

import dataclasses
import itertools

FORMATS: tuple[str, ...] = ("auto", "sft", "preference", "ranking")
TOO_LONG_POLICIES: tuple[str, ...] = ("drop", "truncate")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
    # A local .json/.jsonl/.parquet file (chosen by extension), a local directory of data
    # files, or an HF hub dataset name (needs network access).
    path: str
    # The split to read; local files load as the single split "train".
    split: str = "train"
    # "auto" detects the format from the column names; or one of "sft", "preference",
    # "ranking" to insist on it (a file without that format's columns then raises).
    format: str = "auto"
    # Static sequence lengths T; each example goes to the smallest bucket that holds its
    # prompt + response + EOS, so a jitted step traces once per bucket.
    bucket_lengths: tuple[int, ...] = (64, 128, 256)
    # Rows longer than the largest bucket: "drop" them (counted as too_long), or "truncate"
    # the prompt from the left, keeping the response (counted as truncated).
    too_long: str = "drop"
    # Raise on the first unusable row (naming file, row and reason) instead of counting it.
    strict: bool = False
    # Global batch size (over all hosts); must be divisible by the number of processes.
    batch_size: int = 8
    # Seed of the per-epoch shuffle; the shuffle of epoch e is a function of (seed, e).
    seed: int = 0
    # False keeps dataset order (within each bucket), e.g. for evaluation.
    shuffle: bool = True
    # SFT/preference batches also carry a response window (the smallest bucket length holding
    # the batch's longest response), and the LM losses compute logits only there; False takes
    # logits at every position (one trace per bucket instead of per bucket × window).
    response_window: bool = True
    # Rankings: K, the number of response slots; None takes the most any row has.
    max_responses: int | None = None
    # Held-out data: the dataset's own split of that name (e.g. "test") ...
    eval_split: str | None = None
    # ... or, when eval_split is None, this fraction of the examples, chosen with `seed`.
    eval_fraction: float = 0.0
    # Where HF `datasets` caches what it prepared; None uses its default (~/.cache).
    cache_dir: str | None = None

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"data.format={self.format!r}; expected one of {FORMATS}")
        if self.too_long not in TOO_LONG_POLICIES:
            raise ValueError(
                f"data.too_long={self.too_long!r}; expected one of {TOO_LONG_POLICIES}"
            )
        # A ConfigDict hands over lists; a tuple keeps the frozen config hashable.
        object.__setattr__(self, "bucket_lengths", check_bucket_lengths(self.bucket_lengths))
        if self.batch_size < 1:
            raise ValueError(f"data.batch_size={self.batch_size}; expected >= 1")
        if self.max_responses is not None and self.max_responses < 2:
            raise ValueError(f"data.max_responses={self.max_responses}; expected >= 2 or None")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"data.eval_fraction={self.eval_fraction}; expected in [0, 1)")


def check_bucket_lengths(bucket_lengths) -> tuple[int, ...]:
    """Raises unless the lengths are strictly increasing integers >= 2; returns them."""
    lengths = tuple(bucket_lengths)
    if (
        not lengths
        or any(not isinstance(t, int) or t < 2 for t in lengths)
        or any(a >= b for a, b in itertools.pairwise(lengths))
    ):
        raise ValueError(
            f"bucket_lengths={lengths!r}; expected strictly increasing integers >= 2, "
            "e.g. (64, 128, 256)"
        )
    return lengths
