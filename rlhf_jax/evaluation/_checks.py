"""Input checks shared by the evaluation functions: host-side float64 arrays, named errors.

Evaluation runs on the host after the device work is done (it is logging, not a step), so
everything here is NumPy in float64: statistics over a few hundred samples need no
accelerator, and float64 keeps confidence intervals and correlations exact to the digits
that get printed.
"""

from __future__ import annotations

import numpy as np


def as_vector(x, name: str, *, allow_empty: bool = False, finite: bool = True) -> np.ndarray:
    """``x`` as a 1-D float64 array; a ValueError naming ``name`` otherwise."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a 1-D array of numbers: {e}") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {arr.shape}")
    if not allow_empty and arr.size == 0:
        raise ValueError(f"{name} is empty")
    if finite and not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise ValueError(f"{name} has a non-finite value at index {bad}: {arr[bad]}")
    return arr


def as_matrix(x, name: str, *, finite: bool = True) -> np.ndarray:
    """``x`` as a non-empty 2-D float64 array; a ValueError naming ``name`` otherwise."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a 2-D array of numbers: {e}") from None
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (B, N); got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {arr.shape}")
    if finite and not np.all(np.isfinite(arr)):
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
        raise ValueError(f"{name} has a non-finite value at index {bad}: {arr[bad]}")
    return arr


def same_length(**arrays: np.ndarray) -> int:
    """The common length of 1-D arrays; a ValueError listing every length otherwise."""
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{k} has {v}" for k, v in lengths.items())
        raise ValueError(f"lengths differ: {shown}")
    return next(iter(lengths.values()))


def positive_int(n, name: str) -> int:
    """``n`` as an int ≥ 1; a ValueError naming ``name`` otherwise."""
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"{name} must be an integer ≥ 1; got {n!r}")
    return int(n)
