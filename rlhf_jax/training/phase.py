"""Running an offline phase (SFT, reward model, DPO) end to end.

    result = run_phase(dpo.PHASE, dpo.DPOPhaseConfig(...))

What every offline phase does, in order: build the mesh; load the tokenizer and the data
(printing the data report); put the model on the mesh (`rlhf_jax.placement`: a random init, an
HF checkpoint, or the artifact an earlier phase wrote); let the phase prepare its loss
(`Phase.setup`: e.g. DPO's reference log-probs); resume from the latest checkpoint if there is
one; run the jitted step in the shared loop (`loop.Run`); and at the end write the artifact the
next phase loads. What differs between phases lives in their own modules, as a `Phase`.

Run directory layout (``PhaseConfig.run_dir``):
    <run_dir>/checkpoints/<step>/   Orbax checkpoints of the train state and data position
    <run_dir>/artifact/             the final parameters + artifact.json (model config, phase)
    <run_dir>/logs/                 metrics.jsonl and TensorBoard events
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Iterator
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import checkpoint as ckpt_lib
from rlhf_jax import data as data_lib
from rlhf_jax import models, placement, provenance
from rlhf_jax import sharding as sharding_lib
from rlhf_jax.training import state as state_lib
from rlhf_jax.training.loop import Run
from rlhf_jax.training.optimizer import OptimizerConfig, make_optimizer


@dataclasses.dataclass(frozen=True, kw_only=True)
class PhaseConfig:
    """What every offline phase's run takes; a phase with loss options subclasses it."""

    run_dir: str  # where checkpoints, logs and the artifact go
    model: placement.ModelSource
    data: data_lib.DataConfig
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    mesh: sharding_lib.MeshConfig = dataclasses.field(default_factory=sharding_lib.MeshConfig)
    checkpoint: ckpt_lib.CheckpointConfig = dataclasses.field(
        default_factory=ckpt_lib.CheckpointConfig
    )
    total_steps: int = 100  # optimizer steps in the phase (also the schedule's length)
    grad_accum_steps: int = 1  # micro-batches per step (divides the per-step batch)
    log_every: int = 10  # steps between metric writes (the only host syncs)
    eval_every: int = 0  # steps between held-out evaluations (0: only at the end)
    seed: int = 0  # parameter init and step randomness
    skip_nonfinite: bool = False  # skip (and count) non-finite updates instead of stopping
    console: bool = True  # progress bar on the console
    tensorboard: bool = True  # TensorBoard events beside metrics.jsonl
    wandb_project: str | None = None  # also log to this Weights & Biases project (None: off)


Batches = Iterator[dict[str, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class PhaseInputs:
    """What a phase's `setup` may use: its config, model, data and mesh."""

    config: PhaseConfig
    model: placement.PlacedModel  # the initial model, as placed (before any resume)
    train: data_lib.TokenizedDataset
    eval: data_lib.TokenizedDataset | None


@dataclasses.dataclass(frozen=True)
class PhaseParts:
    """What a phase's `setup` returns: its loss and anything its step needs besides."""

    loss_fn: state_lib.LossFn
    frozen_extra: Any = None  # arrays the step reads but never trains (DPO's reference)
    # Adds what the step needs to each batch of a split ("train" or "eval"), e.g. DPO's
    # precomputed reference log-probs; identity by default.
    with_batches: Callable[[Batches, str], Batches] = lambda batches, split: batches
    fingerprint: dict = dataclasses.field(default_factory=dict)  # resume must match these
    meta: dict = dataclasses.field(default_factory=dict)  # recorded in artifact.json


@dataclasses.dataclass(frozen=True)
class Phase:
    """An offline phase: its name, config type, the data and model head it takes, its setup."""

    name: str
    config_type: type[PhaseConfig]
    data_kinds: tuple[str, ...]
    head: Literal["lm", "reward"]
    setup: Callable[[PhaseInputs], PhaseParts]
    new_head: bool = False  # may start from an LM with a fresh head (the reward model)


def run_phase(phase: Phase, config: PhaseConfig, *, stop_after: int | None = None) -> dict:
    """Runs (or resumes) one phase; returns the status, step, state and held-out metrics."""
    if not isinstance(config, phase.config_type):
        raise TypeError(
            f"the {phase.name} phase takes a {phase.config_type.__name__}; "
            f"got {type(config).__name__}"
        )
    mesh = sharding_lib.make_mesh(config.mesh)
    architecture = placement.model_config(config.model)  # a missing checkpoint fails here
    tokenizer = models.load_tokenizer(config.model.tokenizer_path)
    placement.check_tokenizer(tokenizer, architecture, where="model.tokenizer")
    train, eval_ = data_lib.load_train_eval(config.data, tokenizer)
    data_lib.check_tokens(train, tokenizer)
    if train.kind not in phase.data_kinds:
        raise ValueError(
            f"data.path={config.data.path!r} holds {train.kind!r} data; the {phase.name} phase "
            f"needs {' or '.join(phase.data_kinds)} data"
        )
    model = placement.place_model(
        config.model, head=phase.head, mesh=mesh, seed=config.seed, new_head=phase.new_head
    )
    parts = phase.setup(PhaseInputs(config, model, train, eval_))
    tx = make_optimizer(config.optimizer, config.total_steps)
    state, shardings = state_lib.init_train_state(
        model, tx, seed=config.seed, frozen_extra=parts.frozen_extra
    )
    fingerprint = {
        "phase": phase.name,
        "model": model.config.to_dict(),
        "data": data_fingerprint(config.data),
        "num_examples": len(train.examples),
        "optimizer": dataclasses.asdict(config.optimizer),
        # The schedule spans total_steps: a longer run is another schedule, resumed only on
        # purpose (checkpoint.allow_changed_config).
        "total_steps": config.total_steps,
        "grad_accum_steps": config.grad_accum_steps,
        "seed": config.seed,
        # The phase's own section (reward, dpo): every field of a PhaseConfig subclass.
        **{
            f.name: getattr(config, f.name)
            for f in dataclasses.fields(config)
            if f.name not in _BASE
        },
        **parts.fingerprint,
        # A run with adapters resumes only with the same ones (absent without, as before).
        **({"lora": config.model.adapters.to_dict()} if config.model.adapters else {}),
    }
    with Run(
        config.run_dir,
        description=phase.name,
        total_steps=config.total_steps,
        fingerprint=fingerprint,
        checkpoint=config.checkpoint,
        console=config.console,
        tensorboard=config.tensorboard,
        wandb_project=config.wandb_project,
        run_config=config,
    ) as run:
        run.print(f"data {train.report.summary()}")
        iterator = data_lib.make_iterator(train, config.data)
        state, _ = run.resume(state, shardings, iterator.restore)
        batches = parts.with_batches(iter(iterator), "train")
        step = state_lib.jit_train_step(
            parts.loss_fn, tx, shardings, mesh, accum_steps=config.grad_accum_steps
        )
        eval_fn = None
        if eval_ is not None and len(eval_.examples):
            eval_fn = make_eval_fn(parts, eval_, config, mesh)
        state, status = run.loop(
            state,
            lambda s: step(s, sharding_lib.shard_batch(next(batches), mesh)),
            iterator.state,
            log_every=config.log_every,
            skip_nonfinite=config.skip_nonfinite,
            eval_fn=eval_fn,
            eval_every=config.eval_every or config.total_steps,
            stop_after=stop_after,
        )
        result = {"status": status, "step": int(jax.device_get(state.step)), "state": state}
        if status == "finished":
            meta = {"phase": phase.name, "head": phase.head, **parts.meta}
            # LoRA: the artifact holds the adapters (and head); the meta names their base.
            meta.update(placement.adapter_meta(config.model, config.seed))
            meta.update(model=model.config.to_dict(), steps=result["step"])
            meta.update(
                provenance.record(
                    config=config, sources={"model": config.model}, data=[config.data.path],
                    trunk="model",
                )
            )  # fmt: skip
            run.save_artifact(state.params, meta, tokenizer=tokenizer)
            if eval_fn is not None:
                result["eval"] = {k: float(v) for k, v in jax.device_get(eval_fn(state)).items()}
    return result


_BASE = {f.name for f in dataclasses.fields(PhaseConfig)}


def data_fingerprint(data: data_lib.DataConfig) -> dict:
    """What a resume must find unchanged about the data: every setting but where caches go,
    and a local file's SHA-256 (another file of the same rows is other data)."""
    fields = dataclasses.asdict(data)
    fields.pop("cache_dir")
    path = pathlib.Path(data.path).expanduser()
    fields["sha256"] = ckpt_lib.sha256_file(path) if path.is_file() else None
    return fields


def make_eval_fn(parts: PhaseParts, dataset, config: PhaseConfig, mesh):
    """Held-out metrics: the loss's metrics, weighted like the loss, over the whole split."""

    @jax.jit
    def eval_batch(params, frozen, batch):
        loss, (weight, metrics) = parts.loss_fn(params, frozen, batch, None)
        return weight, jax.tree.map(lambda m: m * weight, dict(metrics, loss=loss))

    def evaluate(state):
        it = data_lib.make_iterator(dataset, config.data, num_epochs=1, shuffle=False)
        total_weight, totals = 0.0, None
        for batch in parts.with_batches(iter(it), "eval"):
            weight, sums = eval_batch(
                state.params, state.frozen, sharding_lib.shard_batch(batch, mesh)
            )
            total_weight += float(weight)
            sums = jax.device_get(sums)
            totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
        return {k: jnp.asarray(v / max(total_weight, 1.0)) for k, v in totals.items()}

    return evaluate
