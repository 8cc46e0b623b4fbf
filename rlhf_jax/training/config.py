"""The ml-collections ConfigDict edge: typed frozen dataclasses to ConfigDicts and back.

    section = config_dict(DPOLossConfig(beta=0.2))            # a config file's section
    phase_config = build(DPOPhaseConfig, config.to_dict())     # the library's typed config

A dataclass is the one place a field and its default are written (with a comment saying what
it does): config files start their sections from `config_dict` of the dataclass and set only
what a variant changes, so a new field needs no edit of any config file to be settable from
the command line. `build` turns the ConfigDict back into the dataclasses; nested dataclass
fields are built recursively, and an unknown key raises a ValueError naming its full path
(``config.optimizer.learnig_rate``), so a typo on the command line never passes silently.
Lists become tuples where the field is a tuple.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Mapping
from typing import Any

import ml_collections


def _dataclass_in(annotation) -> type | None:
    """The dataclass type in ``X`` or ``X | None``, else None."""
    if dataclasses.is_dataclass(annotation):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def _field_type(annotation) -> type | None:
    """The type a command-line value of an optional field parses to (None: leave it as is)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _field_type(inner[0]) if len(inner) == 1 else None
    if typing.get_origin(annotation) is typing.Literal:
        return type(typing.get_args(annotation)[0])
    return annotation if annotation in (int, float, str, bool) else None


def config_dict(instance) -> ml_collections.ConfigDict:
    """A ConfigDict of a dataclass instance's fields (nested dataclasses become sections).

    A field that is None becomes a typed placeholder (``--config.x=1.5`` then parses as its
    type); tuples stay tuples.
    """
    if not dataclasses.is_dataclass(instance) or isinstance(instance, type):
        raise TypeError(f"config_dict takes a dataclass instance; got {instance!r}")
    hints = typing.get_type_hints(type(instance))
    out = ml_collections.ConfigDict()
    for field in dataclasses.fields(instance):
        value = getattr(instance, field.name)
        if dataclasses.is_dataclass(value):
            out[field.name] = config_dict(value)
        elif value is None and (kind := _field_type(hints[field.name])) is not None:
            out[field.name] = ml_collections.FieldReference(None, field_type=kind)
        else:
            out[field.name] = value
    return out


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


def field_comments(cls: type) -> dict[str, str]:
    """Each field's documenting comment in ``cls``'s source (and its bases'): the comment on
    the field's line, else the comment lines just above it."""
    import inspect

    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):
            continue
        above: list[str] = []
        for line in lines:
            stripped = line.strip()
            if stripped.startswith("#"):
                above.append(stripped.lstrip("# ").rstrip())
                continue
            match = re.match(r"\s+(\w+)\s*:", line)
            if match and match.group(1) in klass.__dataclass_fields__:
                _, hash_, comment = _code_and_comment(line)
                text = comment if hash_ else " ".join(above)
                if text:
                    out[match.group(1)] = text
            above = []
    return out


def _code_and_comment(line: str) -> tuple[str, str, str]:
    """Splits a source line at its first ``#`` outside a string literal."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#":
            return line[:i], "#", line[i + 1 :].strip()
    return line, "", ""


def describe(cls: type, mapping: Mapping[str, Any], prefix: str = "") -> str:
    """Every field of ``mapping`` (a config of dataclass ``cls``) as ``name = value  # comment``
    lines, nested sections indented under their name."""
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    lines = []
    for field in dataclasses.fields(cls):
        name, value = field.name, mapping.get(field.name, getattr(field, "default", None))
        nested = _dataclass_in(hints[field.name])
        note = f"  # {comments[name]}" if name in comments else ""
        if nested is not None and isinstance(value, Mapping):
            lines.append(f"{prefix}{name}:{note}")
            lines.append(describe(nested, value, prefix + "  "))
        else:
            lines.append(f"{prefix}{name} = {value!r}{note}")
    return "\n".join(lines)


def load_get_config(path: str | os.PathLike):
    """The ``get_config(arg)`` function of the config file at ``path`` (what
    ``--config=path:arg`` calls), for scripts that build several variants of one file."""
    import importlib.util

    path = os.fspath(path)
    spec = importlib.util.spec_from_file_location("config_file", path)
    if spec is None or not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
        raise ValueError(f"{path}: defines no get_config(arg)")
    return module.get_config
