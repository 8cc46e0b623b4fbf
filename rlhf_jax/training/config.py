"""From an ml-collections ConfigDict (the edge) to the library's typed frozen dataclasses.

    phase_config = build(PhaseConfig, config_dict.to_dict())

Nested dataclass fields are built recursively; an unknown key raises a ValueError naming its
full path (``config.optimizer.learnig_rate``), so a typo on the command line never passes
silently. Lists become tuples where the field is a tuple.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any


def _dataclass_in(annotation) -> type | None:
    """The dataclass type in ``X`` or ``X | None``, else None."""
    if dataclasses.is_dataclass(annotation):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def build(cls: type, mapping: Mapping[str, Any] | None, path: str = "config"):
    """Instantiates dataclass ``cls`` from ``mapping``; None stays None."""
    if mapping is None:
        return None
    if isinstance(mapping, cls):
        return mapping
    if not isinstance(mapping, Mapping):
        raise ValueError(f"{path} must be a mapping of fields for {cls.__name__}; got {mapping!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown field(s) {', '.join(f'{path}.{k}' for k in unknown)}; "
            f"{cls.__name__} has: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in mapping.items():
        annotation = hints[name]
        nested = _dataclass_in(annotation)
        if nested is not None and isinstance(value, Mapping):
            value = build(nested, value, f"{path}.{name}")
        elif isinstance(value, list) and "tuple" in str(annotation):
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"{path}: {e}") from None
