"""Low-rank adapters (LoRA; Hu et al. 2021) on the models' projections.

A projection y = x·W becomes

    y = x·W + (α / r) · dropout(x)·A·B,     A: (*in, r),  B: (r, *out),  B = 0 at init

so an adapted model equals its base exactly until B moves (rsLoRA, Kalajdzievski 2023, scales
by α / √r instead). A is drawn like PyTorch's `kaiming_uniform_(a=√5)`, as peft does:
U(−1/√fan_in, 1/√fan_in). The base stays frozen, optionally stored in a lower precision
(``LoraConfig.base_dtype``: the kernels are cast to the compute dtype anyway).

    model = lora.add_adapters(models.CausalLM(cfg, rngs=nnx.Rngs(0)), LoraConfig(rank=8))
    graphdef, adapters, base = nnx.split(model, lora.trainable, ...)   # train ``adapters`` only
    with lora.switched_off(model): ...                                  # the base model

Adapters attach to `layers.Dense` modules whose name (``q``, ``k``, ``v``, ``o``, ``gate``,
``up``, ``down``, ``fc``, ``proj`` and the HF names ``q_proj`` … ``down_proj``) or dotted path
(e.g. ``trunk.layers.attn.q``, as a regular expression) is in ``LoraConfig.targets``. In the
scanned stack each adapter has the leading ``layers`` axis like its kernel, one per layer.

Dropout needs a key per call: `with_dropout(model, key)` (in a training loss, on the model
merged inside the step) gives every adapted projection its own key, per layer of the stack;
without it, dropout is off (rollouts, scoring, evaluation).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re

import jax
import jax.numpy as jnp
from flax import nnx

from rlhf_jax.models.layers import Dense

# Our projection names and the HF module names that mean them.
HF_NAMES = {
    "q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o",
    "gate_proj": "gate", "up_proj": "up", "down_proj": "down",
}  # fmt: skip
PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down", "fc", "proj")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoraConfig:
    """Which projections get adapters, and their shape."""

    rank: int = 8  # r: the adapters' inner width (0: no adapters, where a source allows it)
    alpha: float = 16.0  # α: the update is scaled by α / r (α / √r with rslora)
    # Dropout on the adapters' input, in the SFT, reward and DPO steps; PPO/GRPO updates run
    # without it (their ratio is against the rollout's log-probs, computed without dropout).
    dropout: float = 0.0
    # Projection names or regular expressions over dotted module paths (see the module doc).
    targets: tuple[str, ...] = ("q", "k", "v", "o")
    rslora: bool = False  # scale by α / √r (rank-stabilised LoRA)
    base_dtype: str | None = None  # store the frozen base in this dtype (None: param_dtype)
    seed: int = 0  # the draw of A

    def __post_init__(self):
        if self.rank < 0:
            raise ValueError(f"lora.rank={self.rank}; expected a positive rank (0: off)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout={self.dropout}; expected a rate in [0, 1)")
        if not self.targets:
            raise ValueError("lora.targets is empty; name the projections to adapt, e.g. q, v")
        object.__setattr__(self, "targets", tuple(self.targets))
        for target in self.targets:
            try:
                re.compile(target)
            except re.error as e:
                message = f"lora.targets: {target!r} is not a regular expression ({e})"
                raise ValueError(message) from None
        if self.base_dtype is not None:
            jnp.dtype(self.base_dtype)  # an unknown name fails here, naming it

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LoraConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"lora: unknown fields {unknown}")
        return cls(**d)


class LoraParam(nnx.Param):
    """An adapter matrix: the parameters a LoRA run trains."""


class LoraKey(nnx.Variable):
    """The dropout key of one adapted projection (one per layer in the stack); not trained."""


def _matches(config: LoraConfig, path: tuple) -> bool:
    name, dotted = str(path[-1]), ".".join(str(p) for p in path)
    for target in config.targets:
        if HF_NAMES.get(target, target) == name or re.fullmatch(target, dotted):
            return True
    return False


def adapted(model: nnx.Module):
    """``(path, dense)`` for every projection of ``model`` that carries adapters."""
    return [
        (path, m)
        for path, m in nnx.iter_modules(model)
        if isinstance(m, Dense) and m.lora_a is not None
    ]


def add_adapters(model: nnx.Module, config: LoraConfig) -> nnx.Module:
    """Gives ``model``'s target projections adapters (in place; returns ``model``). A target that
    matches no projection is an error naming the projections there are."""
    if config.rank < 1:
        raise ValueError(f"lora.rank={config.rank}: adapters need a positive rank")
    key = jax.random.key(config.seed)
    found, names = 0, set()
    for index, (path, m) in enumerate(nnx.iter_modules(model)):
        if not isinstance(m, Dense):
            continue
        names.add(".".join(str(p) for p in path))
        if not _matches(config, path):
            continue
        if m.lora_a is not None:
            raise ValueError(f"{'.'.join(map(str, path))} already has adapters")
        _attach(m, config, jax.random.fold_in(key, index))
        found += 1
    if not found:
        raise ValueError(
            f"lora.targets={list(config.targets)} match no projection; the model has "
            f"{sorted(names)} (names: {', '.join(PROJECTIONS)})"
        )
    if config.base_dtype is not None:
        _cast_base(model, jnp.dtype(config.base_dtype))
    return model


def _attach(m: Dense, config: LoraConfig, key) -> None:
    kernel = m.kernel
    names = tuple(kernel.get_metadata().get("out_sharding") or ())
    stacked = names[:1] == ("layers",)
    lead = kernel.shape[:1] if stacked else ()
    shape = kernel.shape[len(lead) :]
    in_shape, out_shape = shape[: m.n_in], shape[m.n_in :]
    body = names[len(lead) :]
    in_names, out_names = body[: m.n_in], body[m.n_in :]
    layers_ax = ("layers",) if stacked else ()
    param = lambda value, names: LoraParam(value, out_sharding=names, eager_sharding=False)
    dtype = kernel.get_value().dtype
    bound = 1.0 / math.sqrt(math.prod(in_shape))
    a = jax.random.uniform(key, (*lead, *in_shape, config.rank), dtype, -bound, bound)
    m.lora_a = param(a, (*layers_ax, *in_names, "lora_rank"))
    b = jnp.zeros((*lead, config.rank, *out_shape), dtype)
    m.lora_b = param(b, (*layers_ax, "lora_rank", *out_names))
    m.lora_scale = config.scale
    m.lora_dropout = config.dropout
    if config.dropout:
        keys = jnp.zeros((*lead, 2), jnp.uint32)
        m.lora_key = LoraKey(keys, out_sharding=(*layers_ax, None), eager_sharding=False)


def _cast_base(model: nnx.Module, dtype) -> None:
    for _, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Param) and not isinstance(var, LoraParam):
            var.set_value(var.get_value().astype(dtype))


def trainable(path, value) -> bool:
    """The nnx filter of what a LoRA run trains: adapters, and a scalar model's head."""
    return isinstance(value, LoraParam) or (
        isinstance(value, nnx.Param) and len(path) > 0 and path[0] == "head"
    )


def has_adapters(model: nnx.Module) -> bool:
    return bool(adapted(model))


@contextlib.contextmanager
def switched_off(model: nnx.Module):
    """Inside, ``model`` computes as its base (the adapters skipped, not multiplied by zero):
    the reference policy of DPO and PPO without a second copy of the weights."""
    modules = [m for _, m in adapted(model)]
    for m in modules:
        m.lora_enabled = False
    try:
        yield model
    finally:
        for m in modules:
            m.lora_enabled = True


def with_dropout(model: nnx.Module, key) -> nnx.Module:
    """Turns the adapters' dropout on for ``model`` (merged inside a training step) with keys
    drawn from ``key``: one per projection and layer. No-op without dropout or adapters."""
    if key is None:
        return model
    for index, (_, m) in enumerate(adapted(model)):
        if not m.lora_dropout:
            continue
        k = jax.random.fold_in(key, index)
        lead = m.lora_key.shape[:-1]
        keys = jax.random.split(k, lead) if lead else k
        # A new variable: one merged inside a step cannot be written from a grad's trace.
        m.lora_key = m.lora_key.replace(jax.random.key_data(keys))
        m.lora_train = True
    return model


def delta(m: Dense) -> jax.Array:
    """(α / r)·A·B in the kernel's shape, float32."""
    a, b = m.lora_a.get_value(), m.lora_b.get_value()
    contract = lambda a, b: jnp.tensordot(a, b, axes=1)
    if a.ndim > m.n_in + 1:  # the stacked layers' leading axis
        contract = jax.vmap(contract)
    return contract(a.astype(jnp.float32), b.astype(jnp.float32)) * m.lora_scale


def merge_adapters(model: nnx.Module, *, dtype=None) -> nnx.Module:
    """``model`` with every adapter folded into its kernel, W ← W + (α / r)·A·B, and removed
    (in place; returns ``model``): what a merged HF export holds. The base kernel is
    upcast to ``dtype`` first (default: the adapters' dtype) so a low-precision base merges at
    the adapters' precision."""
    for _, m in adapted(model):
        target = jnp.dtype(dtype or m.lora_a.get_value().dtype)
        w = m.kernel.get_value().astype(target)
        m.kernel.set_value(w + delta(m).astype(target))
        m.lora_a = m.lora_b = m.lora_key = None
        m.lora_train = False
    return model
