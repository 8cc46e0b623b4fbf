"""Putting a model on the mesh: the one way every phase, PPO's four models, inference and the
benchmarks get their parameters.

    model = place_model(ModelSource(artifact="runs/sft/artifact"), head="lm", mesh=mesh)
    model.graphdef, model.params, model.rest     # sharded by the partition rules

abstract shapes (``nnx.eval_shape``) → shardings from the partition rules → parameters from an
HF checkpoint (safetensors), a phase artifact (Orbax, restored straight into the shardings) or a
random init jitted with ``out_shardings``, so parameters are created where they live. Where
weights are given, their random init is dead code that XLA removes: loading a 0.5B model does
not compile an init of it (22 s on a CPU, 2.6 minutes on a GPU).

Heads: ``"lm"`` (`CausalLM`), ``"reward"`` and ``"value"`` (`ScalarModel` of that kind).
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from collections.abc import Callable, Mapping
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from rlhf_jax import checkpoint as ckpt_lib
from rlhf_jax import models
from rlhf_jax import sharding as sharding_lib
from rlhf_jax.models import lora

Head = Literal["lm", "reward", "value"]
HEADS = ("lm", "reward", "value")
# ModelSource fields that, when set, replace the ModelConfig field of the same name.
STEP_SETTINGS = ("remat", "attention", "logprob_chunk", "scan_unroll")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSource:
    """Where a model comes from: ``hf_path``, else ``artifact``, else a random init of ``init``.

    A preset may carry an ``init`` architecture and the user point ``hf_path`` or ``artifact``
    at weights: loaded weights win, and ``init`` is then unused. Whatever the origin, the
    source's dtypes replace the architecture's, and so do its step settings (remat, attention,
    log-prob chunk, scan unroll) where set; left at None, the architecture's own (an HF
    checkpoint's: `models.ModelConfig`'s defaults; an artifact's: what it was trained with).
    """

    hf_path: str | None = None  # an HF checkpoint directory (config.json + safetensors)
    artifact: str | None = None  # an earlier phase's artifact directory
    init: models.ModelConfig | None = None  # random init when neither of the above is given
    tokenizer: str | None = None  # tokenizer directory; defaults to hf_path
    dtype: str = "float32"  # compute dtype (bfloat16 on accelerators)
    param_dtype: str = "float32"  # storage dtype of the parameters
    # How the steps run (`models.ModelConfig`'s fields of the same names; None: the config's):
    remat: str | None = None  # "none", "block" or "dots": what a scanned block keeps for backward
    attention: str | None = None  # "xla" or "cudnn" (GPUs, bfloat16/float16)
    logprob_chunk: int | None = None  # LM-head rows per log-prob chunk (0: automatic)
    scan_unroll: int | None = None  # layers per iteration of the scanned layer loop
    # Low-rank adapters (`models.lora`): train these on the frozen weights above (rank 0 or
    # None: train every weight). The artifact then holds the adapters; loading it merges them.
    lora: models.LoraConfig | None = dataclasses.field(
        default_factory=lambda: models.LoraConfig(rank=0)
    )

    def __post_init__(self):
        if isinstance(self.lora, Mapping):  # from a JSON record or a ConfigDict
            object.__setattr__(self, "lora", models.LoraConfig.from_dict(dict(self.lora)))
        if self.hf_path is not None and self.artifact is not None:
            raise ValueError("model: set one of hf_path and artifact, not both")
        if self.hf_path is None and self.artifact is None and self.init is None:
            raise ValueError("model: set hf_path, artifact, or init (a random initialisation)")

    @property
    def adapters(self) -> models.LoraConfig | None:
        """The LoRA config when adapters are on (rank > 0), else None."""
        return self.lora if self.lora is not None and self.lora.rank > 0 else None

    @property
    def origin(self) -> Literal["hf", "artifact", "init"]:
        if self.hf_path is not None:
            return "hf"
        return "artifact" if self.artifact is not None else "init"

    @property
    def tokenizer_path(self) -> str:
        """``tokenizer``, else the HF checkpoint's, else the one the artifact carries."""
        if self.tokenizer or self.hf_path:
            return self.tokenizer or self.hf_path
        if self.artifact is not None:
            carried = ckpt_lib.artifact_tokenizer(self.artifact)
            if carried is None:
                raise ValueError(
                    f"model.tokenizer is required: {self.artifact} was written before artifacts "
                    "carried their tokenizer; set it to the tokenizer the artifact was trained with"
                )
            return str(carried)
        raise ValueError("model.tokenizer is required with a random init (model.init)")


def model_config(source: ModelSource) -> models.ModelConfig:
    """The source's architecture, with its dtypes and the step settings it sets."""
    if source.origin == "hf":
        cfg, _ = models.load_config(source.hf_path)
    elif source.origin == "artifact":
        cfg = models.ModelConfig.from_dict(ckpt_lib.read_artifact_meta(source.artifact)["model"])
    else:
        cfg = source.init
    settings = {name: getattr(source, name) for name in STEP_SETTINGS}
    settings = {name: value for name, value in settings.items() if value is not None}
    return cfg.replace(dtype=source.dtype, param_dtype=source.param_dtype, **settings)


def check_tokenizer(
    tokenizer, config: models.ModelConfig, *, where: str, field: str = "model.tokenizer"
) -> None:
    """Refuses a tokenizer whose ids do not fit the model's vocabulary (before any step: an id
    past the embedding table would otherwise end in a non-finite loss, or silently wrap)."""
    size = len(tokenizer)
    if size > config.vocab_size:
        raise ValueError(
            f"{where}: the tokenizer ({tokenizer.name_or_path}) has {size} tokens but the model's "
            f"vocabulary holds {config.vocab_size}; it is not this model's tokenizer. Set "
            f"{field} to the tokenizer the model was trained with."
        )


def check_same_tokenizer(tokenizer, other: ModelSource, *, where: str) -> None:
    """Refuses a model (a reward model, a judge) that reads token ids with another vocabulary
    than ``tokenizer``'s: it would score the ids of one tokenizer as the words of another."""
    try:
        path = other.tokenizer_path
        theirs = models.load_tokenizer(path)
    except (OSError, ValueError):
        return  # no tokenizer recorded or saved beside it: nothing to compare with
    if theirs.get_vocab() != tokenizer.get_vocab():
        raise ValueError(
            f"{where} was trained with another tokenizer ({path}) than the policy's "
            f"({tokenizer.name_or_path}); it cannot score the policy's tokens"
        )


def build_module(config: models.ModelConfig, head: Head, seed: int) -> nnx.Module:
    if head == "lm":
        return models.CausalLM(config, rngs=nnx.Rngs(seed))
    if head in ("reward", "value"):
        return models.ScalarModel(config, kind=head, rngs=nnx.Rngs(seed))
    raise ValueError(f"head={head!r}; expected one of {HEADS}")


def split_model(model: nnx.Module, trainable=nnx.Param):
    """``(graphdef, params, rest)``: the trained parameters (``trainable``, an nnx filter: every
    Param, or `lora.trainable`'s adapters) and every other variable."""
    return nnx.split(model, trainable, ...)


def copy_tree(tree):
    """Fresh buffers: a donated state must not share one with another tree (e.g. a reference
    policy equal to the initial one)."""
    return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


def abstract_like(tree, shardings):
    """ShapeDtypeStructs with shardings: the restore target for an Orbax checkpoint."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


@dataclasses.dataclass
class PlacedModel:
    """A model on the mesh, split for functional use (``nnx.merge`` inside jit)."""

    graphdef: nnx.GraphDef
    params: nnx.State  # the nnx.Params, sharded
    rest: nnx.State  # every other variable, sharded
    shardings: nnx.State  # of ``params``
    rest_shardings: nnx.State  # of ``rest``
    mesh: jax.sharding.Mesh
    config: models.ModelConfig | None = None  # the architecture, for models of this package

    def merged(self) -> nnx.Module:
        return nnx.merge(self.graphdef, self.params, self.rest)


def place_module(
    module_fn: Callable[[], nnx.Module],
    mesh,
    *,
    given: Mapping[str, nnx.State] | None = None,
    config: models.ModelConfig | None = None,
    rules=sharding_lib.DEFAULT_RULES,
    trainable=nnx.Param,
) -> PlacedModel:
    """Places ``module_fn()``'s parameters on ``mesh`` by the partition rules.

    ``given`` holds top-level parameter subtrees that already exist (loaded weights, e.g.
    ``{"trunk": ...}`` under a fresh head); they are moved to their shardings (and dtypes) and
    every other variable is initialised under jit, straight into its sharding. ``trainable``
    (an nnx filter) picks the parameters the model's phase trains (`lora.trainable` for
    adapters); every other variable is ``rest``, given weights included.
    """
    graphdef, abstract, abstract_rest = split_model(nnx.eval_shape(module_fn), trainable)
    shardings = sharding_lib.state_shardings(abstract, mesh, rules)
    rest_shardings = sharding_lib.state_shardings(abstract_rest, mesh, rules)
    given = dict(given or {})
    top = {*abstract, *abstract_rest}
    unknown = sorted(set(given) - top)
    if unknown:
        raise ValueError(f"given parameters {unknown} are not in the model ({sorted(top)})")
    given_flat = {
        _key((name, *path)): var
        for name, subtree in given.items()
        for path, var in nnx.to_flat_state(nnx.State(dict(subtree)))
    }
    flats = [nnx.to_flat_state(abstract), nnx.to_flat_state(abstract_rest)]
    sh_flats = [dict(nnx.to_flat_state(shardings)), dict(nnx.to_flat_state(rest_shardings))]
    known = {_key(path) for flat in flats for path, _ in flat}
    stray = sorted(set(given_flat) - known)
    if stray:
        raise ValueError(f"given parameters {stray[:5]} are not in the model")
    fresh_sh = {
        _key(path): sh_flat[path].get_value()
        for flat, sh_flat in zip(flats, sh_flats, strict=True)
        for path, _ in flat
        if _key(path) not in given_flat
    }

    def init():
        _, params, rest = split_model(module_fn(), trainable)
        return {
            _key(path): var.get_value()
            for state in (params, rest)
            for path, var in nnx.to_flat_state(state)
            if _key(path) in fresh_sh
        }

    fresh = jax.jit(init, out_shardings=fresh_sh)()

    def assemble(flat, sh_flat):
        leaves = []
        for path, var in flat:
            k = _key(path)
            if k in fresh:
                value = fresh[k]
            else:
                value = given_flat[k]
                value = value.get_value() if isinstance(value, nnx.Variable) else value
                dtype = var.get_value().dtype
                value = jax.device_put(jnp.asarray(value, dtype), sh_flat[path].get_value())
            leaves.append((path, var.replace(value)))
        return nnx.from_flat_state(leaves)

    params, rest = (assemble(f, sh) for f, sh in zip(flats, sh_flats, strict=True))
    return PlacedModel(graphdef, params, rest, shardings, rest_shardings, mesh, config)


def _key(path) -> str:
    return "/".join(str(p) for p in path)


def _artifact_head(meta: Mapping, directory) -> str:
    head = meta.get("head")
    if head not in ("lm", "reward"):
        raise ckpt_lib.CheckpointError(f"{directory}: artifact.json has no known head ({head!r})")
    return head


def _load_artifact(directory, module_fn, mesh) -> nnx.State:
    meta = ckpt_lib.read_artifact_meta(directory)
    if meta.get("lora") is not None:
        return _load_adapted_artifact(directory, meta, module_fn, mesh)
    _, abstract, _ = split_model(nnx.eval_shape(module_fn))
    target = abstract_like(abstract, sharding_lib.state_shardings(abstract, mesh))
    if "0" in ckpt_lib.artifact_tree(directory).get("trunk", {}).get("layers", {}):
        return ckpt_lib.load_per_layer_artifact(directory, target)
    params, _ = ckpt_lib.load_artifact(directory, target)
    return params


def adapter_meta(source: ModelSource, seed: int) -> dict:
    """What an artifact of a LoRA run records besides its adapters: their config and the base
    they adapt (absolute paths; a random init by its seed), so that loading it finds both."""
    if source.adapters is None:
        return {}
    if source.origin == "init":
        base = {"init": True, "seed": seed}
    else:
        key = "hf_path" if source.origin == "hf" else "artifact"
        base = {key: str(pathlib.Path(getattr(source, key)).expanduser().absolute())}
    return {"lora": source.adapters.to_dict(), "base": base}


def _adapted(directory, meta, cfg, head: Head, mesh) -> PlacedModel:
    """A LoRA run's artifact on the mesh, its adapters (and head) apart from the frozen base
    they were trained on (recorded in artifact.json; itself possibly a LoRA artifact)."""
    config = models.LoraConfig.from_dict(meta["lora"])
    base = dict(meta.get("base") or {})
    seed = int(base.pop("seed", 0))
    base.pop("init", None)
    try:
        source = ModelSource(**base, init=cfg, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        given = _given_weights(source, cfg, head, seed, mesh, new_head=True)
    except (OSError, ValueError) as e:
        raise ckpt_lib.CheckpointError(
            f"{directory} holds LoRA adapters for the base {meta.get('base')}, which cannot be "
            f"loaded: {e}"
        ) from e
    with_adapters = lambda: lora.add_adapters(build_module(cfg, head, seed), config)
    placed = place_module(with_adapters, mesh, given=given, config=cfg, trainable=lora.trainable)
    target = abstract_like(placed.params, placed.shardings)
    placed.params, _ = ckpt_lib.load_artifact(directory, target)
    return placed


def _load_adapted_artifact(directory, meta, module_fn, mesh) -> nnx.State:
    """A LoRA run's artifact as plain weights: its adapters merged into the base's kernels."""
    module = nnx.eval_shape(module_fn)
    head: Head = "lm" if isinstance(module, models.CausalLM) else module.head.kind
    placed = _adapted(directory, meta, module.config, head, mesh)
    return split_model(lora.merge_adapters(placed.merged()))[1]


def place_adapters(artifact: str, *, mesh) -> tuple[PlacedModel, models.LoraConfig, dict]:
    """A LoRA run's artifact with its adapters kept apart (for exporting them as a peft
    adapter): the placed model (``params``: adapters and head), their config, their base."""
    meta = ckpt_lib.read_artifact_meta(artifact)
    if meta.get("lora") is None:
        raise ckpt_lib.CheckpointError(f"{artifact} was trained without LoRA: it has no adapters")
    cfg = model_config(ModelSource(artifact=artifact))
    placed = _adapted(artifact, meta, cfg, _artifact_head(meta, artifact), mesh)
    return placed, models.LoraConfig.from_dict(meta["lora"]), dict(meta["base"])


def _given_weights(source: ModelSource, cfg, head: Head, seed: int, mesh, new_head: bool):
    """The parameters ``source`` supplies for a model with ``head``: all of them, or only the
    trunk when ``new_head`` allows a fresh head on an LM's trunk (the reward-model phase)."""
    if source.origin == "init":
        return {}
    if source.origin == "hf":
        if head == "lm":
            loaded = models.load_pretrained(
                source.hf_path, dtype=source.dtype, param_dtype=source.param_dtype
            )
        else:
            if not new_head and not models.has_score_head(source.hf_path):
                raise ckpt_lib.CheckpointError(
                    f"{source.hf_path} is a language model without a score head; a {head} "
                    "model needs a *ForSequenceClassification checkpoint (or a reward artifact)"
                )
            loaded = models.load_scalar_model(
                source.hf_path,
                kind=head,
                dtype=source.dtype,
                param_dtype=source.param_dtype,
                seed=seed,
                fresh_head=head == "value",
            )
        return dict(split_model(loaded)[1])
    meta = ckpt_lib.read_artifact_meta(source.artifact)
    saved = _artifact_head(meta, source.artifact)
    if saved == head:
        return dict(_load_artifact(source.artifact, lambda: build_module(cfg, head, seed), mesh))
    if head == "lm" or not new_head:
        raise ckpt_lib.CheckpointError(
            f"{source.artifact} holds a {saved} model (artifact.json 'head'); this needs a "
            f"{head} model"
        )
    # An LM artifact (e.g. the SFT policy) initialises the trunk; the head starts fresh.
    trunk_of = _load_artifact(source.artifact, lambda: build_module(cfg, saved, seed), mesh)
    return {"trunk": trunk_of["trunk"]}


def place_model(
    source: ModelSource | str,
    *,
    head: Head,
    mesh,
    seed: int = 0,
    new_head: bool = False,
) -> PlacedModel:
    """A policy (``head="lm"``), reward model or critic from a ``ModelSource`` (or an artifact
    directory), on ``mesh``.

    ``new_head`` lets a scalar model start from an LM (an LM artifact or an HF LM checkpoint)
    with a freshly initialised head, as the reward-model phase does; otherwise a reward model
    must come with its head, and a wrong kind of artifact is an error naming it.
    """
    if isinstance(source, str):
        source = ModelSource(artifact=source)
    cfg = model_config(source)
    given = _given_weights(source, cfg, head, seed, mesh, new_head)
    module_fn, trainable = functools.partial(build_module, cfg, head, seed), nnx.Param
    if source.adapters is not None:  # adapters train; the loaded weights are frozen
        module_fn = lambda: lora.add_adapters(build_module(cfg, head, seed), source.adapters)
        trainable = lora.trainable
    return place_module(module_fn, mesh, given=given, config=cfg, trainable=trainable)
