"""Masked reductions shared by the losses.

Every token-level loss in this package is padding-invariant: whatever sits under mask 0 — pad
logits, garbage values, even ``inf`` — changes neither the outputs nor the gradients. That takes
the "double where": inputs are replaced by a harmless constant under the mask *before* any
arithmetic, because ``where(mask, f(x), 0)`` alone still back-propagates ``0 * f'(x) = nan``
when ``f(x)`` is not finite at a padded position.

Letters: B batch, T time (tokens), K responses per prompt.
"""

from __future__ import annotations

from typing import Literal

import jax.numpy as jnp

Aggregation = Literal[
    "token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm"
]
AGGREGATIONS: tuple[str, ...] = (
    "token_mean",
    "seq_mean_token_mean",
    "seq_mean_token_sum",
    "seq_mean_token_sum_norm",
)


def compute_dtype(*xs) -> jnp.dtype:
    """float32 for the maths, float64 when an input already is (reference and gradient tests)."""
    dtype = jnp.float32
    for x in xs:
        if x is not None and jnp.asarray(x).dtype == jnp.float64:
            dtype = jnp.float64
    return jnp.dtype(dtype)


def upcast(x, dtype) -> jnp.ndarray:
    """Casts bf16/f16/int inputs to the compute dtype."""
    return jnp.asarray(x).astype(dtype)


def as_mask(mask, shape, name: str) -> jnp.ndarray:
    """Validates a 0/1 (or boolean) mask's shape and returns it as booleans."""
    mask = jnp.asarray(mask)
    if mask.shape != tuple(shape):
        raise ValueError(f"{name} has shape {mask.shape}; expected {tuple(shape)}")
    return mask.astype(bool)


def check_same_shape(**arrays) -> tuple[int, ...]:
    """Raises a ValueError naming the argument whose shape differs from the first one."""
    (first_name, first), *rest = arrays.items()
    shape = jnp.shape(first)
    for name, x in rest:
        if jnp.shape(x) != shape:
            raise ValueError(f"{name} has shape {jnp.shape(x)}, but {first_name} has shape {shape}")
    return shape


def sanitize(x, mask) -> jnp.ndarray:
    """Zeros ``x`` under the mask before any arithmetic (the first half of the double where)."""
    return jnp.where(mask, x, jnp.zeros((), x.dtype))


def masked_sum(x, mask, axis=None) -> jnp.ndarray:
    return jnp.sum(sanitize(x, mask), axis=axis)


def masked_mean(x, mask, axis=None) -> jnp.ndarray:
    """Mean over the valid entries; 0 (not nan) where there are none."""
    count = jnp.sum(mask, axis=axis, dtype=x.dtype)
    return masked_sum(x, mask, axis=axis) / jnp.maximum(count, 1)


def masked_var(x, mask, axis=None, *, unbiased: bool = False) -> jnp.ndarray:
    """Variance over the valid entries (biased by default, as in lm-human-preferences)."""
    mean = masked_mean(x, mask, axis=axis)
    if axis is not None:
        mean = jnp.expand_dims(mean, axis)
    centred = sanitize(x - mean, mask)
    count = jnp.sum(mask, axis=axis, dtype=x.dtype)
    denom = count - 1 if unbiased else count
    return jnp.sum(centred * centred, axis=axis) / jnp.maximum(denom, 1)


def batch_mean(x_B, mask_B=None) -> jnp.ndarray:
    """Mean of a per-example quantity; ``mask_B`` drops rows that only pad a static batch."""
    if mask_B is None:
        return jnp.mean(x_B)
    return masked_mean(x_B, as_mask(mask_B, x_B.shape, "mask"))


def aggregate(
    loss_BxT,
    mask_BxT,
    *,
    mode: str,
    norm_constant: float | None = None,
    normalizer=None,
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Reduces a per-token loss to a scalar; returns ``(loss, numerator, denominator)``.

    Modes (they change learning dynamics; see Dr. GRPO, Liu et al. 2025, and DAPO, Yu et al.
    2025, for why):
      token_mean:              Σ_bt l·m / Σ_bt m             (every token weighs the same)
      seq_mean_token_mean:     mean_b (Σ_t l·m / Σ_t m)      (every sequence weighs the same)
      seq_mean_token_sum:      mean_b Σ_t l·m                (long sequences weigh more)
      seq_mean_token_sum_norm: mean_b Σ_t l·m / C            (C a constant, e.g. max length)
    The mean over b counts only sequences with at least one valid token, so rows that pad a
    static batch drop out.

    ``normalizer`` replaces the local denominator (the token or sequence count) — pass the count
    of the whole minibatch so that summing the micro-batch losses of a gradient accumulation, or
    summing over devices, equals the minibatch loss exactly.
    """
    if mode not in AGGREGATIONS:
        raise ValueError(f"aggregation={mode!r}; expected one of {AGGREGATIONS}")
    dtype = loss_BxT.dtype
    loss_BxT = sanitize(loss_BxT, mask_BxT)
    tokens_B = jnp.sum(mask_BxT, axis=-1, dtype=dtype)
    valid_seq_B = tokens_B > 0
    if mode == "token_mean":
        numerator = jnp.sum(loss_BxT)
        denominator = jnp.sum(tokens_B)
    else:
        per_seq_B = jnp.sum(loss_BxT, axis=-1)
        if mode == "seq_mean_token_mean":
            per_seq_B = per_seq_B / jnp.maximum(tokens_B, 1)
        elif mode == "seq_mean_token_sum_norm":
            if norm_constant is None or norm_constant <= 0:
                raise ValueError(
                    "aggregation='seq_mean_token_sum_norm' needs norm_constant > 0 "
                    f"(got {norm_constant!r}), e.g. the maximum response length"
                )
            per_seq_B = per_seq_B / norm_constant
        numerator = jnp.sum(per_seq_B)
        denominator = jnp.sum(valid_seq_B, dtype=dtype)
    if normalizer is not None:
        denominator = jnp.asarray(normalizer, dtype)
    return numerator / jnp.maximum(denominator, 1), numerator, denominator


def soft_target(label, shape, dtype, label_smoothing: float = 0.0):
    """The per-pair target probability (1−ε) q + ε (1 − q) of a soft label q ∈ [0, 1]."""
    q = upcast(jnp.broadcast_to(label, shape), dtype)
    return (1.0 - label_smoothing) * q + label_smoothing * (1.0 - q)
