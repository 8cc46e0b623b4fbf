"""What an artifact remembers about how it was made, so that later phases, exports and readers
need nothing but the artifact.

``artifact.json`` carries, besides the model config and the phase:
- ``tokenizer``: the tokenizer, copied into ``<artifact>/tokenizer/`` (a few files), which later
  phases and exports load when no ``tokenizer`` is given;
- ``base_checkpoint``: the HF checkpoint at the root of the chain of phases (None: a random
  init), carried from artifact to artifact;
- ``sources``: each model the phase started from (origin and absolute path);
- ``data``: the data files read, each with its SHA-256 (None for a hub name or directory);
- ``config``: the phase's whole typed config, and ``code``: the package version (and the git
  revision when run from a checkout).
"""

from __future__ import annotations

import datetime
import functools
import pathlib
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

import rlhf_jax
from rlhf_jax import checkpoint as ckpt_lib
from rlhf_jax.logging import jsonable
from rlhf_jax.placement import ModelSource


@functools.cache
def code_version() -> dict[str, Any]:
    """The package version, and the git revision (with a dirty flag) of a source checkout."""
    root = pathlib.Path(rlhf_jax.__file__).resolve().parents[1]
    out: dict[str, Any] = {"rlhf_jax": rlhf_jax.__version__, "git": None}
    if (root / ".git").exists():
        try:
            rev = subprocess.run(
                ["git", "-C", str(root), "rev-parse", "HEAD"],
                capture_output=True, text=True, timeout=10, check=True,
            ).stdout.strip()  # fmt: skip
            dirty = subprocess.run(
                ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True, text=True, timeout=10, check=True,
            ).stdout.strip()  # fmt: skip
            out.update(git=rev, dirty=bool(dirty))
        except (OSError, subprocess.SubprocessError):
            pass
    return out


def file_record(path: str) -> dict[str, Any]:
    """A data source: its path (absolute when local) and, for a local file, its SHA-256."""
    local = pathlib.Path(path).expanduser()
    if local.is_file():
        return {"path": str(local.resolve()), "sha256": ckpt_lib.sha256_file(local)}
    if local.exists():
        return {"path": str(local.resolve()), "sha256": None}
    return {"path": path, "sha256": None}  # a hub dataset name


def base_checkpoint(source: ModelSource) -> str | None:
    """The HF checkpoint a chain of phases started from (None: a random initialisation)."""
    if source.origin == "hf":
        return str(pathlib.Path(source.hf_path).expanduser().resolve())
    if source.origin == "artifact":
        return ckpt_lib.read_artifact_meta(source.artifact).get("base_checkpoint")
    return None


def source_record(source: ModelSource) -> dict[str, Any]:
    path = source.hf_path if source.origin == "hf" else source.artifact
    resolved = None if path is None else str(pathlib.Path(path).expanduser().resolve())
    return {"origin": source.origin, "path": resolved, "base_checkpoint": base_checkpoint(source)}


def record(
    *, config, sources: Mapping[str, ModelSource | None], data: Sequence[str], trunk: str
) -> dict[str, Any]:
    """The provenance fields of an artifact.json; ``trunk`` names the source whose base
    checkpoint the artifact's weights descend from (the policy, the model)."""
    present = {name: s for name, s in sources.items() if s is not None}
    return {
        "base_checkpoint": base_checkpoint(present[trunk]),
        "sources": {name: source_record(s) for name, s in present.items()},
        "data": [file_record(p) for p in data],
        "config": jsonable(config),
        "code": code_version(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
