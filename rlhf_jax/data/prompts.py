"""Prompt sets for RL: the "prompt" column of a dataset (any source `load_rows` reads)."""

from __future__ import annotations

from rlhf_jax.data.loading import load_rows


def load_prompts(path: str, *, split: str = "train", cache_dir: str | None = None) -> list:
    """The prompts of ``path``'s ``split`` (strings, or chat message lists), in file order.

    Raises a ValueError naming the file when there is no "prompt" column, or naming the rows
    whose prompt is empty.
    """
    rows = load_rows(path, split=split, cache_dir=cache_dir)
    if "prompt" not in rows.column_names:
        raise ValueError(f"{path}: RL prompts need a 'prompt' column; found {rows.column_names}")
    prompts = rows["prompt"]
    empty = [i for i, p in enumerate(prompts) if not p]
    if empty:
        raise ValueError(f"{path}: rows {empty[:5]} have an empty prompt ({len(empty)} in all)")
    return prompts
