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
from collections.abc import Callable, Mapping
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from rlhf_jax import checkpoint as ckpt_lib
from rlhf_jax import models
from rlhf_jax import sharding as sharding_lib

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

    def __post_init__(self):
        if self.hf_path is not None and self.artifact is not None:
            raise ValueError("model: set one of hf_path and artifact, not both")
        if self.hf_path is None and self.artifact is None and self.init is None:
            raise ValueError("model: set hf_path, artifact, or init (a random initialisation)")

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


def split_model(model: nnx.Module):
    """``(graphdef, params, rest)``: the trained Params and any other variables."""
    return nnx.split(model, nnx.Param, ...)


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
) -> PlacedModel:
    """Places ``module_fn()``'s parameters on ``mesh`` by the partition rules.

    ``given`` holds top-level parameter subtrees that already exist (loaded weights, e.g.
    ``{"trunk": ...}`` under a fresh head); they are moved to their shardings and every other
    parameter is initialised under jit, straight into its sharding.
    """
    graphdef, abstract, abstract_rest = split_model(nnx.eval_shape(module_fn))
    shardings = sharding_lib.state_shardings(abstract, mesh, rules)
    rest_shardings = sharding_lib.state_shardings(abstract_rest, mesh, rules)
    given = dict(given or {})
    unknown = sorted(set(given) - set(abstract))
    if unknown:
        raise ValueError(f"given parameters {unknown} are not in the model ({sorted(abstract)})")
    fresh_keys = [k for k in abstract if k not in given]

    def init():
        _, params, rest = split_model(module_fn())
        return {k: _raw(params[k]) for k in fresh_keys}, rest

    fresh, rest = jax.jit(
        init, out_shardings=({k: _raw(shardings[k]) for k in fresh_keys}, rest_shardings)
    )()
    placed = {k: jax.device_put(_raw(v), _raw(shardings[k])) for k, v in given.items()}
    params = nnx.State({k: fresh[k] if k in fresh else placed[k] for k in abstract})
    return PlacedModel(graphdef, params, rest, shardings, rest_shardings, mesh, config)


def _raw(subtree):
    """A State's nested subtree as the plain dicts that ``nnx.split`` nests inside a State, so
    that a State rebuilt from subtrees has the same pytree structure as the split one."""
    return subtree.raw_mapping if isinstance(subtree, nnx.State) else subtree


def _artifact_head(meta: Mapping, directory) -> str:
    head = meta.get("head")
    if head not in ("lm", "reward"):
        raise ckpt_lib.CheckpointError(f"{directory}: artifact.json has no known head ({head!r})")
    return head


def _load_artifact(directory, module_fn, mesh) -> nnx.State:
    _, abstract, _ = split_model(nnx.eval_shape(module_fn))
    target = abstract_like(abstract, sharding_lib.state_shardings(abstract, mesh))
    if "0" in ckpt_lib.artifact_tree(directory).get("trunk", {}).get("layers", {}):
        return _load_per_layer_artifact(directory, target)
    params, _ = ckpt_lib.load_artifact(directory, target)
    return params


def _load_per_layer_artifact(directory, target: nnx.State) -> nnx.State:
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
    restored, _ = ckpt_lib.load_artifact(directory, jax.tree.map(lambda x: {"value": x}, saved))
    restored = jax.tree.map(
        lambda v: v["value"], restored, is_leaf=lambda v: isinstance(v, dict) and "value" in v
    )
    layers = [restored["trunk"]["layers"][str(i)] for i in range(count)]
    restored["trunk"]["layers"] = jax.tree.map(
        lambda t, *xs: jax.device_put(jnp.stack(xs), t.sharding), stacked, *layers
    )
    nnx.replace_by_pure_dict(target, restored)
    return target


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
    return place_module(
        functools.partial(build_module, cfg, head, seed), mesh, given=given, config=cfg
    )
