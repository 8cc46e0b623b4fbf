"""Reading rows with HF `datasets`: local JSON/JSONL/Parquet files, directories, hub names."""

from __future__ import annotations

import json
import os

import datasets

# File extension → the `datasets` builder that reads it.
BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
# The column that marks a JSON Lines line that could not be read as a row (its reason); the
# format parsers count such rows as `report.BAD_LINE`.
BAD_LINE_COLUMN = "__bad_line__"


def _looks_like_path(path: str) -> bool:
    """A name with a data-file extension or a path separator is meant as a local path."""
    # A hub name is "name" or "org/name"; "a/b/c" is a path.
    return (
        os.path.splitext(path)[1].lower() in BUILDERS
        or path.startswith((".", "/", "~"))
        or path.count("/") > 1
    )


def _json_lines(path: str) -> datasets.Dataset | None:
    """A JSON Lines file with bad lines, read line by line: every good line a row, every line
    that is not UTF-8, not JSON or not an object a row carrying its reason in
    `BAD_LINE_COLUMN` (so the data report counts it by line); blank lines skipped. None when
    the file has no bad line (`datasets` reads it), or is one JSON document (or one line)."""
    with open(path, "rb") as f:
        content = f.read()
    try:
        json.loads(content.decode("utf-8"))
        return None  # one JSON document (or a single line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        pass
    raw = content.split(b"\n")
    rows, good = [], 0
    for number, line in enumerate(raw, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line.decode("utf-8"))
            problem = None if isinstance(value, dict) else f"a JSON {type(value).__name__}"
        except UnicodeDecodeError as e:
            problem, value = f"not UTF-8 (byte {e.start})", None
        except json.JSONDecodeError as e:
            problem, value = f"not JSON: {e.msg} (column {e.colno})", None
        if problem is None:
            rows.append(value)
            good += 1
        else:
            rows.append({BAD_LINE_COLUMN: f"line {number}: {problem}"})
    if good == len(rows) or not good or len(rows) == 1:
        return None  # all good (datasets reads it), or not JSON Lines at all
    columns = list(dict.fromkeys(k for row in rows for k in row))  # every row's, in order
    try:
        return datasets.Dataset.from_dict({k: [row.get(k) for row in rows] for k in columns})
    except Exception:  # columns whose type varies: left to the whole-file error
        return None


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
        if BUILDERS[ext] == "json":
            # JSON Lines with bad lines (not UTF-8, not JSON, not objects): `datasets` would
            # refuse the file, or worse load it with null or undecodable rows; read it line by
            # line instead, each bad line a row the data report counts.
            lines = _json_lines(expanded)
            if lines is not None:
                return lines
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
