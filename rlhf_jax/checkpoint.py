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

Integrity: every finished checkpoint and every artifact carries the SHA-256 of each of its files
(``rlhf_jax.manifest.json``; an artifact's are in artifact.json), verified before a restore. A
damaged latest checkpoint is reported, moved to ``checkpoints/damaged/``, and the newest intact
one is restored instead; an artifact that fails its check is an error naming the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import shutil
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from rlhf_jax.logging import jsonable
from rlhf_jax.models import CheckpointError

__all__ = ["CheckpointError"]  # re-exported: one error for HF checkpoints and ours alike


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    # Steps between saves (the last step and interrupts always save); None: spread evenly
    # over the run (`every`), so the cadence follows total_steps / iterations.
    save_every: int | None = None
    keep: int = 3  # how many recent checkpoints to keep
    async_save: bool = True  # write in a background thread while training goes on
    # Resume even when the checkpoint was written with other settings (the differing fields
    # are printed): to continue a run deliberately with, say, a new learning rate or data
    allow_changed_config: bool = False

    def every(self, total_steps: int, *, saves_per_run: int, minimum: int = 1) -> int:
        """``save_every``, or when None ``saves_per_run`` saves over ``total_steps``."""
        if self.save_every is not None:
            return self.save_every
        return max(minimum, total_steps // saves_per_run)


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


# Fingerprint fields added after checkpoints were written without them: such a checkpoint
# resumes as before (it cannot have been written with another value of what it did not record).
ADDED_LATER = ("total_steps", "iterations")


def check_fingerprint(saved: Mapping, current: Mapping, *, where: str, allow=None) -> None:
    """Raises naming the fields that differ; with ``allow`` (a print function) reports them
    and goes on instead (``checkpoint.allow_changed_config``)."""
    current = {k: v for k, v in current.items() if k in saved or k not in ADDED_LATER}
    diffs = _differences(jsonable(saved), jsonable(current))
    if not diffs:
        return
    listed = "\n  ".join(diffs)
    if allow is not None:
        allow(
            f"resuming {where} with changed settings (checkpoint.allow_changed_config):\n  {listed}"
        )
        return
    raise CheckpointError(
        f"checkpoint {where} was written by a different configuration; differing fields:\n  "
        f"{listed}\nUse a new run directory, restore the configuration it was written with, or "
        "set checkpoint.allow_changed_config=True to continue with the new settings."
    )


MANIFEST = "rlhf_jax.manifest.json"


def sha256_file(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_checksums(root: pathlib.Path, *, skip: tuple[str, ...] = (MANIFEST,)) -> dict[str, str]:
    """Relative path → SHA-256 of every file under ``root`` (but ``skip``), in path order."""
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel not in skip:
            out[rel] = sha256_file(path)
    return out


def checksum_problems(root: pathlib.Path, expected: Mapping[str, str]) -> list[str]:
    """What differs between ``root``'s files and ``expected`` (empty: intact)."""
    actual = file_checksums(root, skip=(MANIFEST, ARTIFACT_META))
    problems = [f"{root / rel}: missing" for rel in expected if rel not in actual]
    problems += [
        f"{root / rel}: checksum differs"
        for rel in expected
        if rel in actual and actual[rel] != expected[rel]
    ]
    problems += [f"{root / rel}: not in the manifest" for rel in actual if rel not in expected]
    return problems


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

    def _step_dir(self, step: int) -> pathlib.Path:
        return self.directory / str(step)

    def _seal(self) -> None:
        """Waits for writes in flight, then writes the manifest of every finished checkpoint
        that has none yet (process 0; the files are on a filesystem every host sees)."""
        self._manager.wait_until_finished()
        if jax.process_index() != 0:
            return
        for step in self._manager.all_steps():
            folder = self._step_dir(step)
            if folder.is_dir() and not (folder / MANIFEST).exists():
                (folder / MANIFEST).write_text(json.dumps(file_checksums(folder), indent=1))

    def save(self, step: int, state, data_state: Mapping, *, force: bool = False) -> bool:
        """Saves when ``step`` is on the save interval (or ``force``); returns whether it did.

        A state's ``frozen`` arrays (the reference policy, a LoRA run's base weights, the
        reward model) are not saved: a run rebuilds them from its sources, so a checkpoint
        holds what training changes (under LoRA: adapters and optimizer state only)."""
        self._seal()
        if hasattr(state, "frozen"):
            state = state.replace(frozen=None)
        return self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(jsonable(data_state)),
                meta=ocp.args.JsonSave(self.fingerprint),
            ),
            force=force,
        )

    def _restore_step(self, step: int, abstract_state, report=print):
        folder = self._step_dir(step)
        manifest = folder / MANIFEST
        if manifest.exists():
            problems = checksum_problems(folder, json.loads(manifest.read_text()))
            if problems:
                raise _Damaged("; ".join(problems[:3]))
        try:
            meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        except Exception as e:  # damaged metadata: Orbax's own message, the folder named
            raise _Damaged(f"{folder}: unreadable ({type(e).__name__}: {e})") from None
        allow = report if self.config.allow_changed_config else None
        check_fingerprint(meta["meta"], self.fingerprint, where=str(folder), allow=allow)
        if hasattr(abstract_state, "frozen") and not self._saved_frozen(step):
            abstract_state = abstract_state.replace(frozen=None)  # the caller supplies them
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    data=ocp.args.JsonRestore(),
                ),
            )
        except Exception as e:
            raise _Damaged(f"{folder}: unreadable ({type(e).__name__}: {e})") from None
        return restored["state"], restored["data"]

    def _saved_frozen(self, step: int) -> bool:
        """Whether the checkpoint holds the state's frozen arrays (written before they were
        left out of checkpoints)."""
        return bool(saved_state_tree(self._step_dir(step)).get("frozen"))

    def restore(self, abstract_state, step: int | None = None, *, report=print):
        """Restores ``(state, data_state)`` into ``abstract_state``'s shapes and shardings.

        ``abstract_state`` is a tree of ``jax.ShapeDtypeStruct`` with ``sharding`` set (e.g.
        ``jax.eval_shape`` of the init, with shardings attached), so every array lands on the
        devices where the running job expects it. The state's ``frozen`` comes back None
        (the caller has them; see `save`) unless the checkpoint predates that. Without
        ``step``, the newest intact checkpoint: a damaged one (checksum, or unreadable) is
        reported through ``report``, moved to ``damaged/``, and the one before it tried.
        """
        steps = sorted(self._manager.all_steps(), reverse=True) if step is None else [step]
        if not steps or steps[0] is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        problems = []
        for candidate in steps:
            try:
                return self._restore_step(candidate, abstract_state, report)
            except _Damaged as e:
                problems.append(str(e))
                if step is not None:
                    break
                report(f"checkpoint {self._step_dir(candidate)} is damaged ({e}); set aside in "
                       f"{self.directory / 'damaged'}, trying the one before")  # fmt: skip
                self._set_aside(candidate)
        raise CheckpointError(
            f"no intact checkpoint in {self.directory}:\n  " + "\n  ".join(problems)
        )

    def _set_aside(self, step: int) -> None:
        if jax.process_index() == 0:
            target = self.directory / "damaged" / str(step)
            target.parent.mkdir(exist_ok=True)
            if target.exists():
                shutil.rmtree(target)
            shutil.move(str(self._step_dir(step)), str(target))
        self._manager.reload()

    def wait(self) -> None:
        self._seal()

    def close(self) -> None:
        self._seal()
        self._manager.close()


def saved_state_tree(step_dir: str | pathlib.Path) -> dict:
    """The nested names of a checkpoint's saved train state (each leaf: its array's metadata;
    {} when unreadable, which the restore then reports)."""
    try:
        with ocp.StandardCheckpointer() as ckptr:
            return dict(ckptr.metadata(pathlib.Path(step_dir) / "state").item_metadata.tree)
    except Exception:
        return {}


class _Damaged(Exception):
    """A checkpoint step that fails its checksum or cannot be read (the message says which)."""


ARTIFACT_META = "artifact.json"


ARTIFACT_TOKENIZER = "tokenizer"  # the tokenizer's copy inside an artifact


def save_artifact(
    directory: str | pathlib.Path, params, *, meta: Mapping[str, Any], tokenizer=None
) -> None:
    """Writes a phase's hand-off: ``params`` (an Orbax tree) and ``meta`` (JSON) beside them,
    and the ``tokenizer`` (an HF tokenizer) in ``tokenizer/``, recorded in the meta."""
    directory = pathlib.Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(directory / "params", params, force=True)
        ckptr.wait_until_finished()
    if jax.process_index() == 0:
        meta = jsonable(meta)
        if tokenizer is not None:  # afresh: a re-saved artifact keeps no stale tokenizer file
            shutil.rmtree(directory / ARTIFACT_TOKENIZER, ignore_errors=True)
            tokenizer.save_pretrained(directory / ARTIFACT_TOKENIZER)
            meta["tokenizer"] = ARTIFACT_TOKENIZER
        meta["checksums"] = file_checksums(directory, skip=(ARTIFACT_META,))
        (directory / ARTIFACT_META).write_text(json.dumps(meta, indent=2))


def artifact_tokenizer(directory: str | pathlib.Path) -> pathlib.Path | None:
    """The tokenizer an artifact carries (None: an artifact written before they did)."""
    name = read_artifact_meta(directory).get("tokenizer")
    return None if name is None else pathlib.Path(directory) / name


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
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None


def artifact_tree(directory: str | pathlib.Path) -> dict[str, Any]:
    """The nested names of an artifact's saved parameters (each leaf: its array's metadata)."""
    with ocp.StandardCheckpointer() as ckptr:
        metadata = ckptr.metadata(pathlib.Path(directory).absolute() / "params")
    return dict(metadata.item_metadata.tree)


def load_artifact(
    directory: str | pathlib.Path, abstract_params, *, expect: Mapping[str, Any] | None = None
):
    """Restores a phase artifact into ``abstract_params`` (shapes + shardings).

    ``expect`` lists meta fields that must match (e.g. the model config), checked before any
    array is read so that a wrong artifact fails with the differing fields named. Every file's
    checksum is verified first: a damaged artifact is an error naming the file.
    """
    directory = pathlib.Path(directory).absolute()
    meta = read_artifact_meta(directory)
    if "checksums" in meta:
        problems = checksum_problems(directory, meta["checksums"])
        if problems:
            raise CheckpointError(
                f"artifact {directory} is damaged: "
                + "; ".join(problems[:3])
                + ". Rerun the phase that wrote it (delete the artifact folder first)."
            )
    if expect is not None:
        saved = {k: meta.get(k, "<absent>") for k in expect}
        check_fingerprint(saved, dict(expect), where=str(directory))
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(directory / "params", abstract_params)
    return params, meta


def load_per_layer_artifact(directory, target: nnx.State) -> nnx.State:
    """An artifact saved when each layer had its own parameters (``trunk.layers.<i>.*``, before
    the layers were stacked for `jax.lax.scan`): each layer restored with its slice's sharding,
    then stacked into ``target``'s ``layers`` axis."""
    pure = nnx.to_pure_dict(target)
    stacked = pure["trunk"]["layers"]
    count = jax.tree.leaves(stacked)[0].shape[0]

    def layer_target(x):
        spec = tuple(x.sharding.spec) + (None,) * (len(x.shape) - len(x.sharding.spec))
        sharding = NamedSharding(x.sharding.mesh, PartitionSpec(*spec[1:]))
        return jax.ShapeDtypeStruct(x.shape[1:], x.dtype, sharding=sharding)

    per_layer = jax.tree.map(layer_target, stacked)
    saved = {
        **pure,
        "trunk": {**pure["trunk"], "layers": {str(i): per_layer for i in range(count)}},
    }
    # Saved as variables: each array under a "value" key.
    restored, _ = load_artifact(directory, jax.tree.map(lambda x: {"value": x}, saved))
    restored = jax.tree.map(
        lambda v: v["value"], restored, is_leaf=lambda v: isinstance(v, dict) and "value" in v
    )
    layers = [restored["trunk"]["layers"][str(i)] for i in range(count)]
    restored["trunk"]["layers"] = jax.tree.map(
        lambda t, *xs: jax.device_put(jnp.stack(xs), t.sharding), stacked, *layers
    )
    nnx.replace_by_pure_dict(target, restored)
    return target
