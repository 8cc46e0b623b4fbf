"""Helpers for the loss tests: random inputs, poisoned padding, float64 finite differences."""

from __future__ import annotations

import jax
import numpy as np
from hypothesis import strategies as st

# (seed, batch, time) triples for property tests over shapes and masks.
shapes_and_seeds = st.tuples(st.integers(0, 2**31 - 1), st.integers(1, 5), st.integers(1, 9))

POISONS = (np.inf, -np.inf, np.nan, 1e30)


def random_mask(rng: np.random.Generator, shape, *, right_padded: bool = False) -> np.ndarray:
    """A 0/1 mask; right-padded rows have a random length (possibly 0)."""
    if right_padded:
        lengths = rng.integers(0, shape[-1] + 1, size=shape[:-1])
        return (np.arange(shape[-1]) < lengths[..., None]).astype(np.float32)
    return (rng.random(shape) < 0.7).astype(np.float32)


def poison(x, mask, value) -> np.ndarray:
    """Writes ``value`` everywhere the mask is 0."""
    x = np.array(x, copy=True)
    x[np.broadcast_to(np.asarray(mask) == 0, x.shape)] = value
    return x


def finite_difference_grad(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central differences of a scalar float64 function, one coordinate at a time."""
    x = np.asarray(x, np.float64)
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += h
        down[idx] -= h
        grad[idx] = (float(f(up)) - float(f(down))) / (2 * h)
    return grad


def grads_match_finite_differences(loss_fn, args: list[np.ndarray], argnums) -> None:
    """Asserts jax.grad of ``loss_fn(*args)`` equals float64 central differences."""
    with jax.enable_x64(True):
        args = [np.asarray(a, np.float64) for a in args]
        for i in argnums:
            analytic = np.asarray(jax.grad(loss_fn, argnums=i)(*args))

            def partial(xi, i=i):
                local = list(args)
                local[i] = xi
                return loss_fn(*local)

            numeric = finite_difference_grad(partial, args[i])
            np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8, err_msg=f"arg {i}")
