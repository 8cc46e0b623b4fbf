"""Running an offline phase (SFT, reward model, DPO) end to end.

    result = run_phase(PhaseConfig(...), kind="sft")

What every phase does, in order: build the mesh; load the tokenizer and the data (printing the
data report); build the model already sharded (random init, an HF checkpoint, or the artifact
an earlier phase wrote); resume from the phase's latest checkpoint if there is one; run the
jitted step in the shared loop; and at the end write the phase artifact the next phase loads.

Run directory layout (``PhaseConfig.run_dir``):
    <run_dir>/checkpoints/<step>/   Orbax checkpoints of the train state and data position
    <run_dir>/artifact/             the final parameters + artifact.json (model config, phase)
    <run_dir>/logs/                 metrics.jsonl and TensorBoard events
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from rlhf_jax import checkpoint as ckpt_lib
from rlhf_jax import data as data_lib
from rlhf_jax import models
from rlhf_jax import sharding as sharding_lib
from rlhf_jax.logging import MetricWriter
from rlhf_jax.training import dpo as dpo_lib
from rlhf_jax.training import reward as reward_lib
from rlhf_jax.training import sft as sft_lib
from rlhf_jax.training import state as state_lib
from rlhf_jax.training.loop import run_loop

PhaseKind = Literal["sft", "reward", "dpo"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSource:
    """Where a phase's model comes from: hf_path or artifact, else a random init of ``init``."""

    hf_path: str | None = None  # an HF checkpoint directory (config.json + safetensors)
    artifact: str | None = None  # an earlier phase's artifact directory
    init: models.ModelConfig | None = None  # random init when neither of the above is given
    tokenizer: str | None = None  # tokenizer directory; defaults to hf_path
    dtype: str = "float32"  # compute dtype (bfloat16 on accelerators)
    param_dtype: str = "float32"  # storage dtype of the parameters

    def __post_init__(self):
        if self.hf_path is not None and self.artifact is not None:
            raise ValueError("model: set one of hf_path and artifact, not both")
        if self.hf_path is None and self.artifact is None and self.init is None:
            raise ValueError("model: set hf_path, artifact, or init (a random initialisation)")
        if self.tokenizer is None and self.hf_path is None:
            raise ValueError("model.tokenizer is required unless model.hf_path is set")
        if self.hf_path is not None or self.artifact is not None:
            object.__setattr__(self, "init", None)  # a loaded model ignores the init preset


@dataclasses.dataclass(frozen=True, kw_only=True)
class RewardLossConfig:
    label_smoothing: float = 0.0  # probability a label is wrong (conservative BT)
    center_coef: float = 0.0  # reward-centering penalty coef · (r_c + r_r)²
    pooling: str = "last"  # sequence reward: "last" valid token, or "mean" over the response
    # Pairs run as one packed row [prompt | chosen | rejected], the prompt computed once
    # (`rlhf_jax.training.pairs`; needs data.response_window); same results, fewer FLOPs.
    share_prompt: bool = True


@dataclasses.dataclass(frozen=True, kw_only=True)
class DPOLossConfig:
    loss_type: str = "sigmoid"  # sigmoid | robust | hinge | ipo | simpo | orpo
    beta: float = 0.1  # KL strength (β of DPO; SimPO's β)
    label_smoothing: float = 0.0  # cDPO / rDPO label-noise rate
    precompute_reference: bool = True  # one pass of the reference before training
    simpo_gamma: float = 0.5  # SimPO target margin
    orpo_beta: float = 0.1  # ORPO weight of the odds-ratio term
    share_prompt: bool = True  # packed pairs, policy and reference alike (as RewardLossConfig)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PhaseConfig:
    run_dir: str  # where checkpoints, logs and the artifact go
    model: ModelSource
    data: data_lib.DataConfig
    optimizer: state_lib.OptimizerConfig = dataclasses.field(
        default_factory=state_lib.OptimizerConfig
    )
    mesh: sharding_lib.MeshConfig = dataclasses.field(default_factory=sharding_lib.MeshConfig)
    checkpoint: ckpt_lib.CheckpointConfig = dataclasses.field(
        default_factory=ckpt_lib.CheckpointConfig
    )
    total_steps: int = 100  # optimizer steps in the phase
    grad_accum_steps: int = 1  # micro-batches per step (divides the per-step batch)
    log_every: int = 10  # steps between metric writes (the only host syncs)
    eval_every: int = 0  # steps between held-out evaluations (0: only at the end)
    seed: int = 0  # parameter init and step randomness
    skip_nonfinite: bool = False  # skip (and count) non-finite updates instead of stopping
    reward: RewardLossConfig = dataclasses.field(default_factory=RewardLossConfig)
    dpo: DPOLossConfig = dataclasses.field(default_factory=DPOLossConfig)
    console: bool = True  # progress bar on the console
    tensorboard: bool = True  # TensorBoard events beside metrics.jsonl


def model_config_to_dict(cfg: models.ModelConfig) -> dict:
    return dataclasses.asdict(cfg)


def model_config_from_dict(d: dict) -> models.ModelConfig:
    d = dict(d)
    if d.get("rope_scaling") is not None:
        d["rope_scaling"] = models.RopeScaling(**d["rope_scaling"])
    d["eos_token_ids"] = tuple(d.get("eos_token_ids") or ())
    return models.ModelConfig(**d)


def source_model_config(source: ModelSource) -> models.ModelConfig:
    if source.init is not None:
        cfg = source.init
    elif source.hf_path is not None:
        cfg, _ = models.load_config(source.hf_path)
    else:
        meta = ckpt_lib.read_artifact_meta(source.artifact)
        cfg = model_config_from_dict(meta["model"])
    return cfg.replace(dtype=source.dtype, param_dtype=source.param_dtype)


def build_module(kind: PhaseKind, cfg: models.ModelConfig, seed: int) -> nnx.Module:
    rngs = nnx.Rngs(seed)
    if kind == "reward":
        return models.ScalarModel(cfg, kind="reward", rngs=rngs)
    return models.CausalLM(cfg, rngs=rngs)


def source_params(kind: PhaseKind, source: ModelSource, cfg, seed, abstract_params, shardings):
    """The initial parameters (sharded), or None for a random init done under jit."""
    target = state_lib.abstract_like(abstract_params, shardings)
    if source.init is not None:
        return None
    if source.artifact is not None:
        meta = ckpt_lib.read_artifact_meta(source.artifact)
        saved_model = model_config_from_dict(meta["model"])
        if kind == "reward" and meta.get("head") != "reward":
            # An LM artifact (e.g. the SFT policy) initialises the trunk; the head starts fresh.
            lm_abstract = state_lib.split_model(
                nnx.eval_shape(lambda: models.CausalLM(saved_model, rngs=nnx.Rngs(0)))
            )[1]
            lm_sh = sharding_lib.state_shardings(lm_abstract, shardings_mesh(shardings))
            lm_params, _ = ckpt_lib.load_artifact(
                source.artifact, state_lib.abstract_like(lm_abstract, lm_sh)
            )
            fresh = jax.jit(
                lambda: state_lib.split_model(build_module(kind, cfg, seed))[1],
                out_shardings=shardings,
            )()
            fresh["trunk"] = lm_params["trunk"]
            return fresh
        params, _ = ckpt_lib.load_artifact(source.artifact, target)
        return params
    loaded = (
        models.load_scalar_model(
            source.hf_path,
            kind="reward",
            dtype=source.dtype,
            param_dtype=source.param_dtype,
            seed=seed,
        )
        if kind == "reward"
        else models.load_pretrained(
            source.hf_path, dtype=source.dtype, param_dtype=source.param_dtype
        )
    )
    return jax.device_put(state_lib.split_model(loaded)[1], shardings)


def shardings_mesh(shardings):
    return jax.tree.leaves(shardings)[0].mesh


def _loss_fn(config: PhaseConfig, kind: PhaseKind, data_kind: str, graphdef):
    if kind == "sft":
        return functools.partial(sft_lib.sft_loss, graphdef=graphdef)
    if kind == "reward":
        if data_kind == "ranking":
            return functools.partial(
                reward_lib.reward_ranking_loss, graphdef=graphdef, pooling=config.reward.pooling
            )
        return functools.partial(
            reward_lib.reward_pair_loss,
            graphdef=graphdef,
            label_smoothing=config.reward.label_smoothing,
            center_coef=config.reward.center_coef,
            pooling=config.reward.pooling,
            share_prompt=config.reward.share_prompt,
        )
    d = config.dpo
    return functools.partial(
        dpo_lib.dpo_step_loss,
        graphdef=graphdef,
        loss_type=d.loss_type,
        beta=d.beta,
        label_smoothing=d.label_smoothing,
        simpo_gamma=d.simpo_gamma,
        orpo_beta=d.orpo_beta,
        share_prompt=d.share_prompt,
    )


_EXPECTED_DATA = {"sft": ("sft",), "reward": ("preference", "ranking"), "dpo": ("preference",)}


def precompute_reference_logprobs(dataset, config: PhaseConfig, graphdef, ref_params, rest, mesh):
    """log π_ref of every example's chosen and rejected response, by example id (one pass)."""

    @jax.jit
    def ref_fn(batch):
        return dpo_lib.reference_logprobs(
            graphdef, ref_params, rest, batch, share_prompt=config.dpo.share_prompt
        )

    it = data_lib.make_iterator(dataset, config.data, num_epochs=1, shuffle=False)
    n = len(dataset.examples)
    table = np.zeros((n, 2), np.float32)
    for batch in it:
        chosen, rejected = ref_fn(sharding_lib.shard_batch(batch, mesh))
        ids = multihost_utils.process_allgather(batch["example_id_B"], tiled=True)
        values = np.stack(
            [np.asarray(jax.device_get(chosen)), np.asarray(jax.device_get(rejected))], -1
        )
        real = ids >= 0
        table[ids[real]] = values[real]
    return table


def _with_reference(batches, table):
    for batch in batches:
        ids = batch["example_id_B"]
        safe = np.where(ids >= 0, ids, 0)
        yield dict(
            batch,
            ref_chosen_logp_B=np.where(ids >= 0, table[safe, 0], 0.0).astype(np.float32),
            ref_rejected_logp_B=np.where(ids >= 0, table[safe, 1], 0.0).astype(np.float32),
        )


def run_phase(
    config: PhaseConfig, *, kind: PhaseKind, stop_after: int | None = None
) -> dict[str, Any]:
    """Runs (or resumes) one phase; returns final metrics, held-out metrics and the status."""
    run_dir = pathlib.Path(config.run_dir).absolute()
    mesh = sharding_lib.make_mesh(config.mesh)
    tokenizer = models.load_tokenizer(config.model.tokenizer or config.model.hf_path)
    train, eval_ = data_lib.load_train_eval(config.data, tokenizer)
    if train.kind not in _EXPECTED_DATA[kind]:
        raise ValueError(
            f"data.path={config.data.path!r} holds {train.kind!r} data; the {kind} phase "
            f"needs {' or '.join(_EXPECTED_DATA[kind])} data"
        )
    writer = MetricWriter(
        run_dir / "logs",
        total_steps=config.total_steps,
        description=kind,
        console=config.console,
        tensorboard=config.tensorboard,
    )
    writer.print(f"[{kind}] data: {train.report.summary()}")
    if len(train.examples) == 0:
        raise ValueError(f"data.path={config.data.path!r}: no usable examples (see the report)")

    model_cfg = source_model_config(config.model)
    model_fn = functools.partial(build_module, kind, model_cfg, config.seed)
    abstract = nnx.eval_shape(model_fn)
    graphdef, abstract_params, _ = state_lib.split_model(abstract)
    param_sh = sharding_lib.state_shardings(abstract_params, mesh)
    initial = source_params(kind, config.model, model_cfg, config.seed, abstract_params, param_sh)
    needs_reference = kind == "dpo" and config.dpo.loss_type not in dpo_lib.REFERENCE_FREE
    in_step_reference = needs_reference and not config.dpo.precompute_reference
    reference = None
    if needs_reference:
        # The reference is the initial policy (also after a resume: it is rebuilt from the
        # source, not taken from the partly trained state).
        reference = initial
        if reference is None:
            reference = jax.jit(
                lambda: state_lib.split_model(model_fn())[1], out_shardings=param_sh
            )()
    tx = state_lib.make_optimizer(config.optimizer)
    state, shardings, graphdef = state_lib.init_train_state(
        model_fn,
        tx,
        mesh,
        seed=config.seed,
        params=initial,
        frozen_extra=reference if in_step_reference else None,
    )

    fingerprint = {
        "phase": kind,
        "model": model_config_to_dict(model_cfg),
        "batch_size": config.data.batch_size,
        "bucket_lengths": list(config.data.bucket_lengths),
        "seed": config.seed,
        "data_seed": config.data.seed,
        "num_examples": len(train.examples),
        "grad_accum_steps": config.grad_accum_steps,
        "dpo_reference_in_step": in_step_reference,
    }
    checkpointer = ckpt_lib.PhaseCheckpointer(
        run_dir / "checkpoints", fingerprint=fingerprint, config=config.checkpoint
    )
    iterator = data_lib.make_iterator(train, config.data)
    if checkpointer.latest_step() is not None:
        state, data_state = checkpointer.restore(state_lib.abstract_like(state, shardings))
        iterator.restore(data_state)
        writer.print(f"[{kind}] resumed from step {int(jax.device_get(state.step))}")

    batches = iter(iterator)
    tables = {}
    if needs_reference and not in_step_reference:
        rest = state.frozen["rest"]
        for name, dataset in (("train", train), ("eval", eval_)):
            if dataset is not None and len(dataset.examples):
                tables[name] = precompute_reference_logprobs(
                    dataset, config, graphdef, reference, rest, mesh
                )
        batches = _with_reference(batches, tables["train"])
    del reference

    loss_fn = _loss_fn(config, kind, train.kind, graphdef)
    step_fn = state_lib.jit_train_step(
        loss_fn, tx, shardings, mesh, accum_steps=config.grad_accum_steps
    )
    eval_fn = None
    if eval_ is not None and len(eval_.examples):
        eval_fn = make_eval_fn(loss_fn, eval_, config, mesh, tables.get("eval"))
    state, status = run_loop(
        state=state,
        step_fn=step_fn,
        batches=batches,
        data_state=iterator.state,
        mesh=mesh,
        total_steps=config.total_steps,
        checkpointer=checkpointer,
        writer=writer,
        log_every=config.log_every,
        skip_nonfinite=config.skip_nonfinite,
        eval_fn=eval_fn,
        eval_every=config.eval_every or config.total_steps,
        stop_after=stop_after,
    )
    checkpointer.close()
    writer.close()
    result = {"status": status, "step": int(jax.device_get(state.step)), "state": state}
    if status == "finished":
        ckpt_lib.save_artifact(
            run_dir / "artifact",
            state.params,
            meta={
                "phase": kind,
                "head": "reward" if kind == "reward" else "lm",
                "pooling": config.reward.pooling if kind == "reward" else None,
                "model": model_config_to_dict(model_cfg),
                "steps": result["step"],
            },
        )
        if eval_fn is not None:
            result["eval"] = {k: float(v) for k, v in jax.device_get(eval_fn(state)).items()}
    return result


def make_eval_fn(loss_fn, dataset, config: PhaseConfig, mesh, reference_table=None):
    """Held-out metrics: the loss's metrics, weighted like the loss, over the whole split."""

    @jax.jit
    def eval_batch(params, frozen, batch):
        loss, (weight, metrics) = loss_fn(params, frozen, batch, None)
        return weight, jax.tree.map(lambda m: m * weight, dict(metrics, loss=loss))

    def evaluate(state):
        it = data_lib.make_iterator(dataset, config.data, num_epochs=1, shuffle=False)
        batches = it if reference_table is None else _with_reference(it, reference_table)
        total_weight, totals = 0.0, None
        for batch in batches:
            weight, sums = eval_batch(
                state.params, state.frozen, sharding_lib.shard_batch(batch, mesh)
            )
            total_weight += float(weight)
            sums = jax.device_get(sums)
            totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
        return {k: jnp.asarray(v / max(total_weight, 1.0)) for k, v in totals.items()}

    return evaluate
