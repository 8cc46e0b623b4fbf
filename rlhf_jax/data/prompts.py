"""Prompt sets for RL: the "prompt" column of a dataset (any source `load_rows` reads), and
the rows' other columns, which text reward functions read (a reference answer, say)."""

from __future__ import annotations

import dataclasses
from typing import Any

from rlhf_jax.data.loading import load_rows


@dataclasses.dataclass(frozen=True)
class PromptSet:
    prompts: list  # strings, or chat message lists
    columns: dict[str, list[Any]]  # every other column, row-aligned with ``prompts``

    def rows(self, indices) -> tuple[list, dict[str, list]]:
        """The prompts and columns of ``indices`` (rows of the file)."""
        take = lambda xs: [xs[i] for i in indices]
        return take(self.prompts), {k: take(v) for k, v in self.columns.items()}


def load_prompt_rows(
    path: str, *, split: str = "train", column: str = "prompt", cache_dir: str | None = None
) -> PromptSet:
    """The prompts (``column``, default "prompt") of ``path``'s ``split`` in file order, with
    the rows' other columns.

    Raises a ValueError naming the file when there is no such column, or naming the rows whose
    prompt is empty.
    """
    rows = load_rows(path, split=split, cache_dir=cache_dir)
    if column not in rows.column_names:
        raise ValueError(f"{path}: RL prompts need a {column!r} column; found {rows.column_names}")
    prompts = rows[column]
    empty = [i for i, p in enumerate(prompts) if not p]
    if empty:
        raise ValueError(f"{path}: rows {empty[:5]} have an empty prompt ({len(empty)} in all)")
    columns = {c: rows[c] for c in rows.column_names if c != column}
    return PromptSet(list(prompts), columns)


def load_prompts(
    path: str, *, split: str = "train", column: str = "prompt", cache_dir: str | None = None
) -> list:
    """The prompts alone (`load_prompt_rows`)."""
    return load_prompt_rows(path, split=split, column=column, cache_dir=cache_dir).prompts
