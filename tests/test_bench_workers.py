"""Timing hygiene of the side-by-side workers (benchmarks/worker_*.py) that runs without the
peers installed."""

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import worker_tunix


class _Trainer:
    """A trainer whose input preparation dispatches a jitted computation, as Tunix's DPO does
    (the reference forward), and returns before it has run."""

    def __init__(self):
        self.calls = 0

        @jax.jit
        def work(x):
            for _ in range(8):
                x = jnp.tanh(x @ x)
            return x

        self._work = work

    def _prepare_inputs(self, example):
        self.calls += 1
        return {"ref": self._work(example), "tokens": example}


def test_tunix_inputs_are_ready_when_its_step_hook_runs():
    trainer = worker_tunix._synchronous_inputs(_Trainer())
    x = jnp.asarray(np.random.default_rng(0).standard_normal((256, 256)) / 16, jnp.float32)
    out = trainer._prepare_inputs(x)
    assert trainer.calls == 1
    assert all(leaf.is_ready() for leaf in jax.tree.leaves(out))
    expected = x
    for _ in range(8):
        expected = jnp.tanh(expected @ expected)
    np.testing.assert_allclose(out["ref"], expected, rtol=1e-5, atol=1e-6)
    assert out["tokens"] is x
