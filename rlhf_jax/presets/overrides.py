"""What a command line's overrides mean beyond setting one field each.

    config, notes = resolve(config.to_dict(), overridden, kind="sft")

``overridden`` is the flat dict of the fields set on the command line (ml-collections'
``get_override_values``, plus the ``--config.x=None`` the command pulls out first:
``{"model.artifact": "runs/sft/artifact", ...}``). Then:
- A model source given on the command line replaces the preset's: ``model.artifact`` drops the
  preset's ``model.hf_path`` and the other way round, and the preset's ``tokenizer`` goes with
  it (the tokenizer then comes from the checkpoint, or the one the artifact carries), unless
  those fields are given too. The same for every model source: ``policy`` and ``reward``
  (RL), an evaluation's ``policies.<name>``.
- An experiment gets its own directory: with any override but the `COSMETIC` ones, ``run_dir``
  becomes the preset's plus a hash of the overrides (the same command resumes its own run;
  another configuration never finds it). Naming ``--config.run_dir`` chooses the directory.
Settings derived from the run's length (warm-up, checkpoint cadence) need nothing here: the
presets leave them None, which follows ``total_steps`` / ``iterations`` wherever they are set.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from typing import Any

SOURCE_FIELDS = ("hf_path", "artifact")  # a model source's origins that replace each other
# Overrides that change how a run looks or is kept, not what it computes: they keep the run's
# directory (so that, e.g., allow_changed_config resumes the run it is meant for).
COSMETIC = (
    "run_dir", "console", "tensorboard", "log_every", "wandb_project", "data.cache_dir",
    "checkpoint.save_every", "checkpoint.keep", "checkpoint.async_save",
    "checkpoint.allow_changed_config",
)  # fmt: skip


def _set(config: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    node = config
    for name in parents:
        if not isinstance(node.get(name), dict):
            raise ValueError(f"--config.{dotted}: the config has no section {name!r}")
        node = node[name]
    node[leaf] = value  # a field the config does not have is refused by name when built


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


def overrides_hash(overridden: Mapping[str, Any]) -> str:
    """8 hex digits of the non-cosmetic overrides (names and values): stable across versions
    of the presets, so an interrupted run finds its directory again after an upgrade (the
    checkpoint's fingerprint then names any setting that changed)."""
    kept = {k: v for k, v in sorted(overridden.items()) if k not in COSMETIC}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:8]


def resolve(
    config: Mapping[str, Any], overridden: Mapping[str, Any], *, kind: str
) -> tuple[dict, list[str]]:
    """``(config, notes)``: the config dict with the overrides and their consequences
    applied, and one line per consequence for the console."""
    del kind  # every kind resolves alike; kept for the callers' symmetry
    config = copy.deepcopy(dict(config))
    given = set(overridden)
    notes = []
    for key, value in overridden.items():  # (already in a config from the command line)
        _set(config, key, value)
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
    if "run_dir" not in given and given - set(COSMETIC):
        config["run_dir"] = f"{config['run_dir']}-{overrides_hash(overridden)}"
        notes.append(
            f"run directory {config['run_dir']} (this configuration's own; name one with "
            "--config.run_dir)"
        )
    return config, notes
