"""Reading rows with HF `datasets`: local JSON/JSONL/Parquet files, directories, hub names."""

from __future__ import annotations

import json
import os

import datasets

# File extension → the `datasets` builder that reads it.
BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def _looks_like_path(path: str) -> bool:
    """A name with a data-file extension or a path separator is meant as a local path."""
    # A hub name is "name" or "org/name"; "a/b/c" is a path.
    return (
        os.path.splitext(path)[1].lower() in BUILDERS
        or path.startswith((".", "/", "~"))
        or path.count("/") > 1
    )


def _json_error(path: str) -> str | None:
    """Where a JSON (one document) or JSON Lines file stops parsing; None if it parses."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        json.loads(text)
        return None
    except json.JSONDecodeError as whole:
        document_error = f"line {whole.lineno}: {whole.msg} (column {whole.colno})"
    lines = [(i, line) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]
    for n, (i, line) in enumerate(lines):
        try:
            json.loads(line)
        except json.JSONDecodeError as e:
            if n == 0:  # not JSON Lines either: report it as one document
                return document_error
            return f"line {i}: {e.msg} (column {e.colno})"
    return None


def load_rows(path: str, *, split: str = "train", cache_dir: str | None = None) -> datasets.Dataset:
    """One split of a dataset as an HF `datasets.Dataset`.

    ``path`` is a local ``.json`` (a list of objects, or JSON Lines), ``.jsonl`` or
    ``.parquet`` file — local files have the one split "train" — a local directory that
    `datasets` can read, or else a hub dataset name such as ``"trl-lib/ultrafeedback_binarized"``
    (needs network access). Columns whose type varies from row to row load as they are, so
    that the format validators can report each bad row rather than the whole file failing.
    """
    path = os.fspath(path)
    expanded = os.path.expanduser(path)
    ext = os.path.splitext(expanded)[1].lower()
    if os.path.isfile(expanded):
        if ext not in BUILDERS:
            raise ValueError(
                f"{path}: unsupported file type {ext or '(no extension)'!r}; "
                f"expected one of {sorted(BUILDERS)}"
            )
        if split != "train":
            raise ValueError(f"{path}: a local file has the one split 'train'; got {split!r}")
        try:
            return datasets.load_dataset(
                BUILDERS[ext], data_files=expanded, split="train", cache_dir=cache_dir
            )
        except Exception as e:  # re-raised with the file (and the bad line) named
            where = _json_error(expanded) if BUILDERS[ext] == "json" else None
            if where is not None:
                raise ValueError(f"{path}: not valid JSON: {where}") from e
            raise ValueError(f"{path}: could not be read as {ext}: {e}") from e
    if os.path.isdir(expanded):
        return datasets.load_dataset(expanded, split=split, cache_dir=cache_dir)
    if _looks_like_path(path):
        raise FileNotFoundError(f"data file not found: {path}")
    return datasets.load_dataset(path, split=split, cache_dir=cache_dir)
