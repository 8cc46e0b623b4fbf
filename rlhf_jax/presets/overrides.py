"""What a command line's overrides mean beyond setting one field each.

    config, notes = resolve(config.to_dict(), overridden, kind="sft")

``overridden`` is the flat dict of the fields set on the command line (ml-collections'
``get_override_values``: ``{"model.artifact": "runs/sft/artifact", ...}``). Then:
- ``--config.x=None`` sets an optional field to None (ml-collections would give 'None').
- A model source given on the command line replaces the preset's: ``model.artifact`` drops the
  preset's ``model.hf_path`` and the other way round, and the preset's ``tokenizer`` goes with
  it (the tokenizer then comes from the checkpoint, or the one the artifact carries), unless
  those fields are given too. The same for every model source: ``policy`` and ``reward``
  (RL), an evaluation's ``policies.<name>``.
- Settings derived from the run's length follow it: with ``total_steps`` (RL: ``iterations``)
  given, the warm-up and the checkpoint cadence are derived from it as the presets derive them,
  unless given.
- An experiment gets its own directory: with any override but the run directory and the
  console settings, ``run_dir`` becomes the preset's plus a hash of the whole resolved config
  (the same command resumes its own run; another configuration never finds it). Naming
  ``--config.run_dir`` chooses the directory.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from typing import Any

SOURCE_FIELDS = ("hf_path", "artifact")  # a model source's origins that replace each other
# Overrides that change how a run looks or is kept, not what it computes: they keep the
# run's directory (so that, e.g., allow_changed_config resumes the run it is meant for).
COSMETIC = (
    "run_dir", "console", "tensorboard", "log_every", "wandb_project",
    "checkpoint.allow_changed_config", "checkpoint.keep", "checkpoint.async_save",
)  # fmt: skip


def warmup_steps(total_steps: int) -> int:
    """The presets' warm-up: 5% of the phase."""
    return max(1, total_steps // 20)


def save_every(total_steps: int) -> int:
    """The presets' checkpoint cadence for the offline phases: four per phase."""
    return max(1, total_steps // 4)


def rl_save_every(iterations: int) -> int:
    """The presets' checkpoint cadence for RL: every 5% of the iterations, at least 2."""
    return max(2, iterations // 20)


def _set(config: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    node = config
    for name in parents:
        node = node[name]
    node[leaf] = value


def _get(config: dict, dotted: str):
    node = config
    for name in dotted.split("."):
        if not isinstance(node, Mapping) or name not in node:
            return None
        node = node[name]
    return node


def _model_sources(config: dict, prefix: str = ""):
    """``(dotted name, dict)`` of every model source in the config, nested ones included
    (an evaluation's ``policies.<name>``)."""
    for name, value in config.items():
        if isinstance(value, dict):
            dotted = f"{prefix}{name}"
            if "hf_path" in value and "artifact" in value:
                yield dotted, value
            else:
                yield from _model_sources(value, f"{dotted}.")


def config_hash(config: Mapping[str, Any]) -> str:
    """8 hex digits of the config without its `COSMETIC` fields (run_dir, console, ...)."""
    kept = copy.deepcopy(dict(config))
    for dotted in COSMETIC:
        *parents, leaf = dotted.split(".")
        node = _get(kept, ".".join(parents)) if parents else kept
        if isinstance(node, dict):
            node.pop(leaf, None)
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:8]


def resolve(
    config: Mapping[str, Any], overridden: Mapping[str, Any], *, kind: str
) -> tuple[dict, list[str]]:
    """``(config, notes)``: the config dict with the overrides and their consequences
    applied, and one line per consequence for the console."""
    config = copy.deepcopy(dict(config))
    given = set(overridden)
    notes = []
    for key, value in overridden.items():  # (already in a config from the command line)
        _set(config, key, None if value == "None" else value)
    for section, source in _model_sources(config):
        chosen = [f for f in SOURCE_FIELDS if f"{section}.{f}" in given and source[f] is not None]
        if len(chosen) != 1:
            continue
        for other in (*SOURCE_FIELDS, "tokenizer"):
            if other != chosen[0] and f"{section}.{other}" not in given and source.get(other):
                notes.append(
                    f"{section}.{chosen[0]} given: the preset's {section}.{other}="
                    f"{source[other]!r} no longer applies"
                )
                source[other] = None
    length, rules = (
        ("iterations", {"checkpoint.save_every": rl_save_every})
        if kind == "ppo"
        else (
            "total_steps",
            {"optimizer.warmup_steps": warmup_steps, "checkpoint.save_every": save_every},
        )
    )
    if length in given:
        for key, rule in rules.items():
            if key not in given and _get(config, key) is not None:
                value = rule(int(config[length]))
                _set(config, key, value)
                notes.append(f"{key}={value} (follows {length}={config[length]})")
    if "run_dir" not in given and given - set(COSMETIC):
        config["run_dir"] = f"{config['run_dir']}-{config_hash(config)}"
        notes.append(
            f"run directory {config['run_dir']} (this configuration's own; name one with "
            "--config.run_dir)"
        )
    return config, notes
