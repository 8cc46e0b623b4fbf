"""Orbax checkpoints: one manager per phase for resumable training, and phase artifacts.

Two kinds of checkpoint:
- a *phase checkpoint* (``PhaseCheckpointer``): the whole train state (params, optimizer state,
  step, rng key, counters), the data iterator's position, and a fingerprint of what must not
  change across a resume (architecture, phase, batch shape, seed). Saved every N steps, the
  last K kept, written asynchronously; restored straight into the shardings of the running job.
- a *phase artifact* (``save_artifact``/``load_artifact``): the parameters a phase hands to the
  next (SFT policy → reward-model trunk and DPO policy + reference; reward model → PPO), with
  the model config beside them, so the next phase can refuse one of another architecture.

A checkpoint whose fingerprint differs from the running job's raises ``CheckpointError``
naming the fields that differ.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp

from rlhf_jax.logging import jsonable
from rlhf_jax.models import CheckpointError

__all__ = ["CheckpointError"]  # re-exported: one error for HF checkpoints and ours alike


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    save_every: int = 100  # steps between saves (the last step and interrupts always save)
    keep: int = 3  # how many recent checkpoints to keep
    async_save: bool = True  # write in a background thread while training goes on


def _differences(saved: Any, current: Any, prefix: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(saved) | set(current)):
            name = f"{prefix}.{key}" if prefix else key
            if key not in saved or key not in current:
                out.append(
                    f"{name}: {saved.get(key, '<absent>')!r} → {current.get(key, '<absent>')!r}"
                )
            else:
                out += _differences(saved[key], current[key], name)
        return out
    return [] if saved == current else [f"{prefix}: saved {saved!r}, now {current!r}"]


def check_fingerprint(saved: Mapping, current: Mapping, *, where: str) -> None:
    diffs = _differences(jsonable(saved), jsonable(current))
    if diffs:
        raise CheckpointError(
            f"checkpoint {where} was written by a different configuration; differing fields:\n  "
            + "\n  ".join(diffs)
            + "\nUse a new run directory, or restore the configuration it was written with."
        )


class PhaseCheckpointer:
    """Saves and restores one phase's train state and data position (Orbax CheckpointManager)."""

    def __init__(
        self,
        directory: str | pathlib.Path,
        *,
        fingerprint: Mapping[str, Any],
        config: CheckpointConfig = CheckpointConfig(),
    ):
        self.directory = pathlib.Path(directory).absolute()
        self.fingerprint = jsonable(fingerprint)
        self.config = config
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=config.save_every,
            max_to_keep=config.keep,
            enable_async_checkpointing=config.async_save,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data", "meta")
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state, data_state: Mapping, *, force: bool = False) -> bool:
        """Saves when ``step`` is on the save interval (or ``force``); returns whether it did."""
        return self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(jsonable(data_state)),
                meta=ocp.args.JsonSave(self.fingerprint),
            ),
            force=force,
        )

    def restore(self, abstract_state, step: int | None = None):
        """Restores ``(state, data_state)`` into ``abstract_state``'s shapes and shardings.

        ``abstract_state`` is a tree of ``jax.ShapeDtypeStruct`` with ``sharding`` set (e.g.
        ``jax.eval_shape`` of the init, with shardings attached), so every array lands on the
        devices where the running job expects it.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        check_fingerprint(meta["meta"], self.fingerprint, where=f"{self.directory}/{step}")
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=ocp.args.JsonRestore(),
            ),
        )
        return restored["state"], restored["data"]

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


ARTIFACT_META = "artifact.json"


def save_artifact(directory: str | pathlib.Path, params, *, meta: Mapping[str, Any]) -> None:
    """Writes a phase's hand-off: ``params`` (an Orbax tree) and ``meta`` (JSON) beside them."""
    directory = pathlib.Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(directory / "params", params, force=True)
        ckptr.wait_until_finished()
    if jax.process_index() == 0:
        (directory / ARTIFACT_META).write_text(json.dumps(jsonable(meta), indent=2))


def artifact_exists(directory: str | pathlib.Path) -> bool:
    directory = pathlib.Path(directory)
    return (directory / ARTIFACT_META).is_file() and (directory / "params").is_dir()


def read_artifact_meta(directory: str | pathlib.Path) -> dict[str, Any]:
    path = pathlib.Path(directory) / ARTIFACT_META
    if not path.is_file():
        raise CheckpointError(
            f"{directory} holds no phase artifact ({ARTIFACT_META} missing); "
            "run the phase that writes it first"
        )
    return json.loads(path.read_text())


def load_artifact(
    directory: str | pathlib.Path, abstract_params, *, expect: Mapping[str, Any] | None = None
):
    """Restores a phase artifact into ``abstract_params`` (shapes + shardings).

    ``expect`` lists meta fields that must match (e.g. the model config), checked before any
    array is read so that a wrong artifact fails with the differing fields named.
    """
    directory = pathlib.Path(directory).absolute()
    meta = read_artifact_meta(directory)
    if expect is not None:
        saved = {k: meta.get(k, "<absent>") for k in expect}
        check_fingerprint(saved, dict(expect), where=str(directory))
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(directory / "params", abstract_params)
    return params, meta
