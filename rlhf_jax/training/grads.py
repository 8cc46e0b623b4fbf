"""Gradients of a batch from micro-batches, and the guard that keeps non-finite updates out.

Every trained model here — each offline phase's, PPO's policy and critic — takes its gradient
through `accumulate` and its update through `keep_if_finite`, so accumulation and the guard
have one convention:

    loss_fn(params, micro_batch, index) -> (loss, (weight, metrics))

``loss`` is a mean over the micro-batch and ``weight`` the count it averaged over (tokens, pairs,
sequences). With A micro-batches the result is Σ_a w_a·x_a / Σ_a w_a for the loss, the gradient
and each metric: the whole batch's mean, exactly (up to float rounding), whatever the
micro-batches' counts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

MicroLossFn = Callable[[Any, dict, jax.Array], tuple[jax.Array, tuple[jax.Array, dict]]]


def split_micro(batch: dict, accum_steps: int) -> dict:
    """[B, ...] → [A, B/A, ...] with strided rows, so each micro-batch spans every device."""

    def split(x):
        if x.shape[0] % accum_steps:
            raise ValueError(
                f"batch size {x.shape[0]} does not divide by grad_accum_steps={accum_steps}"
            )
        x = x.reshape((x.shape[0] // accum_steps, accum_steps, *x.shape[1:]))
        return jnp.swapaxes(x, 0, 1)

    return jax.tree.map(split, batch)


def accumulate(loss_fn: MicroLossFn, params, batch: dict, accum_steps: int):
    """``(loss, grads, metrics, weight)`` of ``batch`` as ``accum_steps`` micro-batches."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def micro(carry, xs):
        grad_sum, weight_sum, loss_sum, metric_sum = carry
        micro_batch, index = xs
        (loss, (weight, metrics)), grads = grad_fn(params, micro_batch, index)
        weight = jnp.asarray(weight, jnp.float32)
        grad_sum = jax.tree.map(lambda g, x: g + weight * x, grad_sum, grads)
        metric_sum = jax.tree.map(lambda m, x: m + weight * x, metric_sum, metrics)
        return (grad_sum, weight_sum + weight, loss_sum + weight * loss, metric_sum), None

    micro_batches = split_micro(batch, accum_steps)
    first = jax.tree.map(lambda x: x[0], micro_batches)
    metric_shapes = jax.eval_shape(lambda: loss_fn(params, first, jnp.int32(0))[1][1])
    zeros = (
        jax.tree.map(jnp.zeros_like, params),
        jnp.zeros((), jnp.float32),
        jnp.zeros((), jnp.float32),
        jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), metric_shapes),
    )
    (grad_sum, weight_sum, loss_sum, metric_sum), _ = jax.lax.scan(
        micro, zeros, (micro_batches, jnp.arange(accum_steps))
    )
    denom = jnp.maximum(weight_sum, 1.0)
    grads = jax.tree.map(lambda g: g / denom, grad_sum)
    metrics = jax.tree.map(lambda m: m / denom, metric_sum)
    return loss_sum / denom, grads, metrics, weight_sum


def all_finite(*trees) -> jax.Array:
    """() bool: every leaf of every tree is finite."""
    leaves = [jnp.all(jnp.isfinite(x)) for tree in trees for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def keep_if_finite(finite: jax.Array, new, old):
    """``new`` where ``finite`` else ``old``, leaf by leaf: a non-finite update is never applied."""
    return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)


def count_nonfinite(finite: jax.Array, step: jax.Array, count: jax.Array, first: jax.Array):
    """``(count, first)`` after an update at ``step``: how many were refused, and the step of
    the first refused one (−1 while there is none)."""
    bad = ~finite
    return count + bad.astype(jnp.int32), jnp.where((first < 0) & bad, step, first)
