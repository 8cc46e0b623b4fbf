"""A held-out part of a dataset, e.g. for a reward model's eval accuracy."""

from __future__ import annotations

import numpy as np

from rlhf_jax.data.encoding import TokenizedDataset


def train_eval_split(
    dataset: TokenizedDataset, *, eval_fraction: float, seed: int
) -> tuple[TokenizedDataset, TokenizedDataset]:
    """(train, eval): a seeded random ``eval_fraction`` of the examples is held out.

    At least one example goes to each side; both keep the dataset order and share the
    dataset's report (which covers the whole file). The split depends
    only on (number of examples, fraction, seed), so a resumed run holds out the same rows.
    """
    n = len(dataset)
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction={eval_fraction}; expected in (0, 1)")
    if n < 2:
        raise ValueError(f"{dataset.report.source}: {n} examples cannot be split")
    n_eval = min(max(1, round(eval_fraction * n)), n - 1)
    held_out = np.zeros(n, bool)
    held_out[np.random.default_rng(seed).permutation(n)[:n_eval]] = True
    return dataset.subset(np.flatnonzero(~held_out)), dataset.subset(np.flatnonzero(held_out))
