"""A seeded, resumable iterator of static-shape batches, each host yielding its own rows.

Epoch e is planned from (seed, e) alone: the examples are shuffled, grouped by bucket (so a
batch has one sequence length), cut into global batches of ``batch_size``, and the batches
are shuffled. The last batch of each bucket is filled up with rows whose masks are all zero
(``example_mask_B`` False, ``example_id_B`` -1), so no example is lost and every batch has the
same B. Every example therefore appears exactly once per epoch, and the plan is the same on
every host; host p of n takes rows [p·B/n, (p+1)·B/n) of each global batch.

The position is ``state()``: a small dict of ints saved with the checkpoint; ``restore`` of it
makes the following batches identical to those of the uninterrupted run.
"""

from __future__ import annotations

import jax
import numpy as np

from rlhf_jax.data.collate import collate, response_window
from rlhf_jax.data.encoding import TokenizedDataset

PAD = -1  # plan entry of a filler row


def epoch_plan(
    lengths_N: np.ndarray,
    bucket_lengths,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    shuffle: bool = True,
) -> list[tuple[int, np.ndarray]]:
    """The global batches of one epoch: (bucket length T, example indices (batch_size,))."""
    n = len(lengths_N)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n) if shuffle else np.arange(n)
    plan = []
    for length in bucket_lengths:
        members = order[lengths_N[order] == length]
        for start in range(0, len(members), batch_size):
            indices = np.full(batch_size, PAD, np.int64)
            chunk = members[start : start + batch_size]
            indices[: len(chunk)] = chunk
            plan.append((int(length), indices))
    if shuffle:
        plan = [plan[i] for i in rng.permutation(len(plan))]
    return plan


class BatchIterator:
    """Batches of a `TokenizedDataset` for this host, epoch after epoch.

    Yields dicts as `rlhf_jax.data.collate` describes, with B = batch_size / process_count
    rows. ``num_epochs=None`` iterates forever (training counts steps); ``num_epochs=1``,
    ``shuffle=False`` is one ordered pass (evaluation). With ``response_window`` (the default)
    SFT and preference batches carry the response-window keys, W chosen from the global batch.
    """

    def __init__(
        self,
        dataset: TokenizedDataset,
        *,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        num_epochs: int | None = None,
        process_index: int | None = None,
        process_count: int | None = None,
        response_window: bool = True,
    ):
        if len(dataset) == 0:
            raise ValueError(
                f"{dataset.report.source}: no usable examples\n{dataset.report.summary()}"
            )
        self.process_index = jax.process_index() if process_index is None else process_index
        self.process_count = jax.process_count() if process_count is None else process_count
        if batch_size < 1 or batch_size % self.process_count:
            raise ValueError(
                f"batch_size={batch_size} must be a positive multiple of the process count "
                f"{self.process_count}, so that every host gets the same number of rows"
            )
        if not 0 <= self.process_index < self.process_count:
            raise ValueError(f"process_index={self.process_index} not in [0, {self.process_count})")
        if seed < 0:
            raise ValueError(f"seed={seed}; expected >= 0")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.num_epochs = num_epochs
        self.response_window = response_window
        self.local_batch_size = batch_size // self.process_count
        self._lengths_N = dataset.lengths()
        self._plan_epoch, self._plan_cache = None, []  # the plan of one epoch, kept
        self.steps_per_epoch = len(self._plan(0))
        self.epoch, self.step = 0, 0

    def _plan(self, epoch: int) -> list[tuple[int, np.ndarray]]:
        if self._plan_epoch != epoch:
            self._plan_cache = epoch_plan(
                self._lengths_N,
                self.dataset.bucket_lengths,
                batch_size=self.batch_size,
                seed=self.seed,
                epoch=epoch,
                shuffle=self.shuffle,
            )
            self._plan_epoch = epoch
        return self._plan_cache

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self.num_epochs is not None and self.epoch >= self.num_epochs:
            raise StopIteration
        length, indices = self._plan(self.epoch)[self.step]
        self.step += 1
        if self.step == self.steps_per_epoch:
            self.epoch, self.step = self.epoch + 1, 0
        start = self.process_index * self.local_batch_size
        # W from the global batch, so that every host pads its rows to the same window.
        window = None
        if self.response_window and self.dataset.kind != "ranking":  # rankings: no LM loss
            window = response_window(self.dataset, indices, length=length)
        return collate(
            self.dataset,
            indices[start : start + self.local_batch_size],
            length=length,
            window=window,
        )

    def state(self) -> dict[str, int]:
        """The position (next batch) plus what must match on restore; plain ints for Orbax."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "num_examples": len(self.dataset),
        }

    def restore(self, state) -> None:
        """Continues from a `state()`; raises if it came from other data or settings."""
        state = {k: int(v) for k, v in dict(state).items()}
        mine = self.state()
        for key in ("seed", "batch_size", "num_examples"):
            if key in state and state[key] != mine[key]:
                raise ValueError(
                    f"data iterator state has {key}={state[key]}, but this iterator has "
                    f"{mine[key]}: the checkpoint was written with other data or settings"
                )
        if not 0 <= state["step"] < self.steps_per_epoch or state["epoch"] < 0:
            raise ValueError(
                f"data iterator state (epoch {state['epoch']}, step {state['step']}) is outside "
                f"an epoch of {self.steps_per_epoch} steps"
            )
        self.epoch, self.step = state["epoch"], state["step"]
