"""The building blocks of `transformer.py`: dense projections, norms and the MLP.

Every parameter is an `nnx.Param` whose `out_sharding` metadata names its logical axes (see
`transformer.py`), with `eager_sharding=False` so that creating a model needs no mesh.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from rlhf_jax.models.config import ModelConfig


def param(rngs: nnx.Rngs | None, init, shape, names, dtype) -> nnx.Param:
    value = init(rngs.params() if rngs is not None else None, shape, dtype)
    return nnx.Param(value, out_sharding=tuple(names), eager_sharding=False)


def _lead(p, ndim: int):
    """`p` with leading unit axes up to `ndim` (explicit, since rank promotion is an error)."""
    return p.reshape((1,) * (ndim - p.ndim) + p.shape)


def normal_init(std):
    return lambda key, shape, dtype: std * jax.random.normal(key, shape, dtype)


def _zeros(key, shape, dtype):
    return jnp.zeros(shape, dtype)


def _ones(key, shape, dtype):
    return jnp.ones(shape, dtype)


class Dense(nnx.Module):
    """y = x·W (+ b), contracting the trailing `len(in_shape)` dims of x with W's leading dims.

    Multi-dimensional kernels (e.g. (D, H, K) for q) keep heads a separate, shardable axis.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        out_shape: Sequence[int],
        *,
        in_names: Sequence[str],
        out_names: Sequence[str],
        use_bias: bool,
        config: ModelConfig,
        rngs: nnx.Rngs,
    ):
        pdt = jnp.dtype(config.param_dtype)
        shape = (*in_shape, *out_shape)
        self.kernel = param(rngs, normal_init(config.init_std), shape, (*in_names, *out_names), pdt)
        self.bias = param(rngs, _zeros, tuple(out_shape), out_names, pdt) if use_bias else None
        self.n_in = len(in_shape)
        self.dtype = config.dtype
        # Low-rank adapters (`lora.add_adapters` sets these; None: a plain projection).
        self.lora_a, self.lora_b, self.lora_key = nnx.data(None), nnx.data(None), nnx.data(None)
        self.lora_scale, self.lora_dropout = 0.0, 0.0
        self.lora_enabled, self.lora_train = True, False

    def __call__(self, x):
        dtype = jnp.dtype(self.dtype)
        x = x.astype(dtype)
        y = jnp.tensordot(x, self.kernel[...].astype(dtype), axes=self.n_in)
        if self.lora_a is not None and self.lora_enabled:
            y = y + self._adapter(x)
        if self.bias is not None:
            y = y + _lead(self.bias[...].astype(dtype), y.ndim)
        return y

    def _adapter(self, x):
        """(α / r)·dropout(x)·A·B (see `lora`)."""
        dtype = x.dtype
        if self.lora_train and self.lora_dropout:
            keep = 1.0 - self.lora_dropout
            key = jax.random.wrap_key_data(self.lora_key[...])
            x = jnp.where(jax.random.bernoulli(key, keep, x.shape), x / keep, 0).astype(dtype)
        xa = jnp.tensordot(x, self.lora_a[...].astype(dtype), axes=self.n_in)
        return jnp.tensordot(xa, self.lora_b[...].astype(dtype), axes=1) * jnp.asarray(
            self.lora_scale, dtype
        )


class Norm(nnx.Module):
    """RMSNorm, x·rsqrt(mean x² + ε)·g (Zhang & Sennrich 2019), Gemma's variant with gain 1 + g,
    or LayerNorm (Ba et al. 2016).

    Statistics are taken in float32 whatever the compute dtype.
    """

    def __init__(self, config: ModelConfig, *, size: int | None = None, name: str = "embed"):
        """Over the last axis: the residual stream's D, or ``size`` named ``name`` (e.g. a
        head's K for Qwen3's q/k norms)."""
        pdt = jnp.dtype(config.param_dtype)
        d = config.hidden_size if size is None else size
        self.offset = config.norm == "rms_offset"  # gain 1 + g (Gemma), g = 0 at init
        self.scale = param(None, _zeros if self.offset else _ones, (d,), (name,), pdt)
        self.bias = param(None, _zeros, (d,), (name,), pdt) if config.norm == "layer" else None
        self.eps = config.norm_eps
        self.dtype = config.dtype

    def __call__(self, x_BxTxD):
        dtype = jnp.dtype(self.dtype)
        x = x_BxTxD.astype(jnp.float32)
        if self.bias is None:
            x = x * lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
            if self.offset:  # Gemma multiplies in float32, then casts
                return (x * (1.0 + _lead(self.scale[...].astype(jnp.float32), x.ndim))).astype(
                    dtype
                )
            # HF casts back before the gain; do the same so bf16 runs round identically.
            return x.astype(dtype) * _lead(self.scale[...].astype(dtype), x.ndim)
        mean = jnp.mean(x, axis=-1, keepdims=True)
        x = x - mean
        x = x * lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
        return (x * _lead(self.scale[...], x.ndim) + _lead(self.bias[...], x.ndim)).astype(dtype)


def _activation(name: str, x):
    if name == "silu":
        return jax.nn.silu(x)
    if name == "gelu":
        return jax.nn.gelu(x, approximate=False)
    if name == "gelu_tanh":
        return jax.nn.gelu(x, approximate=True)
    if name == "relu":
        return jax.nn.relu(x)
    raise ValueError(f"unknown activation {name!r}")


class MLP(nnx.Module):
    """Gated (SwiGLU, Shazeer 2020): down(act(gate x) ⊙ up x); plain: proj(act(fc x))."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        d, f = config.hidden_size, config.mlp_dim
        kw = dict(use_bias=config.mlp_bias, config=config, rngs=rngs)
        into = dict(in_names=("embed",), out_names=("mlp",))
        out = dict(in_names=("mlp",), out_names=("embed",))
        if config.gated_mlp:
            self.gate = Dense((d,), (f,), **into, **kw)
            self.up = Dense((d,), (f,), **into, **kw)
            self.down = Dense((f,), (d,), **out, **kw)
        else:
            self.fc = Dense((d,), (f,), **into, **kw)
            self.proj = Dense((f,), (d,), **out, **kw)
        self.gated = config.gated_mlp
        self.activation = config.activation

    def __call__(self, x_BxTxD):
        if self.gated:
            return self.down(_activation(self.activation, self.gate(x_BxTxD)) * self.up(x_BxTxD))
        return self.proj(_activation(self.activation, self.fc(x_BxTxD)))


def is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def is_matrix(x) -> bool:
    """Whether a parameter is a weight matrix (projection, embedding, LM head; biases over two
    axes such as (H, K) count too), not a vector (norm scale, bias): two or more axes other
    than a scanned stack's leading ``layers`` axis. Plain arrays count by ``ndim``."""
    if is_variable(x):
        names = x.get_metadata().get("out_sharding")
        if names:
            return sum(name != "layers" for name in names) >= 2
        x = x.get_value()
    return jnp.ndim(x) >= 2


def matrix_mask(params):
    """A tree like ``params`` holding, per parameter, whether it `is_matrix` (for AdamW's weight
    decay mask)."""
    return jax.tree.map(
        lambda x: x.replace(is_matrix(x)) if is_variable(x) else is_matrix(x),
        params,
        is_leaf=is_variable,
    )
