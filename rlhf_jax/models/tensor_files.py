"""Safetensors checkpoints: reading (name → lazily memory-mapped tensor, over one file or a
sharded index, with a small reader of our own — header + `np.memmap` — because the
`safetensors` numpy backend cannot read bfloat16) and writing (one file or shards + index).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np
import safetensors.numpy


class CheckpointError(ValueError):
    """A checkpoint (an HF directory, a phase checkpoint or artifact) is missing a file or a
    tensor, holds a tensor of the wrong shape, or belongs to another configuration."""


_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}  # fmt: skip


class TensorFiles:
    """Name → lazily memory-mapped tensor over one file or a sharded index."""

    def __init__(self, directory: Path):
        self.directory = directory
        single = directory / "model.safetensors"
        index = directory / "model.safetensors.index.json"
        if single.exists():
            files = [single]
        elif index.exists():
            weight_map = json.loads(index.read_text()).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index}: no 'weight_map' object")
            files = [directory / f for f in sorted(set(weight_map.values()))]
            for f in files:
                if not f.exists():
                    raise CheckpointError(f"{index} names shard {f.name!r}, which does not exist")
        else:
            raise CheckpointError(
                f"{directory}: neither model.safetensors nor model.safetensors.index.json found "
                "(only safetensors checkpoints are supported)"
            )
        self.entries: dict[str, tuple[Path, int, dict]] = {}
        for f in files:
            with open(f, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(n))
            for name, info in header.items():
                if name != "__metadata__":
                    self.entries[name] = (f, 8 + n, info)
        self.used: set[str] = set()

    def find(self, name: str, alternatives: tuple[str, ...] = ()) -> str | None:
        for candidate in (name, *alternatives):
            if candidate in self.entries:
                return candidate
        return None

    def get(self, name: str, shape: tuple[int, ...], alternatives: tuple[str, ...] = ()):
        found = self.find(name, alternatives)
        if found is None:
            raise CheckpointError(f"{self.directory}: tensor {name!r} is missing")
        path, base, info = self.entries[found]
        if tuple(info["shape"]) != tuple(shape):
            raise CheckpointError(
                f"{path}: tensor {found!r} has shape {tuple(info['shape'])}; the config implies "
                f"{tuple(shape)}"
            )
        if info["dtype"] not in _ST_DTYPES:
            raise CheckpointError(f"{path}: tensor {found!r} has unsupported dtype {info['dtype']}")
        start, _ = info["data_offsets"]
        self.used.add(found)
        return np.memmap(
            path, dtype=_ST_DTYPES[info["dtype"]], mode="r", offset=base + start, shape=tuple(shape)
        )


def write_tensors(directory: Path, tensors: dict, *, max_shard_bytes: int | None = None) -> None:
    """``model.safetensors``, or with ``max_shard_bytes`` shards
    ``model-0000i-of-0000n.safetensors`` plus ``model.safetensors.index.json``."""
    meta = {"format": "pt"}  # transformers refuses safetensors files without a known format
    if max_shard_bytes is None:
        safetensors.numpy.save_file(tensors, directory / "model.safetensors", metadata=meta)
        return
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, t in tensors.items():
        if shards[-1] and size + t.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += t.nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        safetensors.numpy.save_file(shard, directory / file, metadata=meta)
        weight_map.update(dict.fromkeys(shard, file))
    index = {
        "metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
        "weight_map": weight_map,
    }
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
