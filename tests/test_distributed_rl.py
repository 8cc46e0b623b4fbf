"""Two JAX processes on localhost (jax.distributed, two fake CPU devices each) run PPO and GRPO
iterations — per-host prompt slices, host-side text rewards — equal to one process."""

import pathlib

import jax
import numpy as np
import pytest
from rl_testing import rl_config
from test_distributed import run_workers
from test_ppo import artifacts  # noqa: F401

from rlhf_jax.training import ppo as ppo_lib

WORKER = pathlib.Path(__file__).with_name("distributed_rl_worker.py")


# GRPO's case (74 s on a cold 2-core machine) runs with the slow tests; GAE's, the one with a
# critic, stays in the default suite.
@pytest.mark.parametrize("estimator", ["gae", pytest.param("grpo", marks=pytest.mark.slow)])
def test_two_processes_run_rl_as_one(artifacts, tmp_path, estimator):  # noqa: F811
    out = tmp_path / "multi" / "result.json"
    out.parent.mkdir()
    multi = run_workers(WORKER, out, str(artifacts), estimator, timeout=600)
    single = ppo_lib.run_ppo(rl_config(artifacts, tmp_path / "single", estimator))
    keys = [
        "objective/scores",
        "objective/kl",
        "loss/policy",
        "rewards/rl_testing.first_word_matches/mean",
    ]
    for a, b in zip(single["history"], multi["history"], strict=True):
        for key in keys:
            np.testing.assert_allclose(b[key], a[key], rtol=1e-4, atol=1e-5, err_msg=key)
    leaves = [np.asarray(p).ravel() for p in jax.tree.leaves(single["state"].policy)]
    for a, b in zip(leaves, multi["policy"], strict=True):
        np.testing.assert_allclose(np.asarray(b), a, rtol=1e-4, atol=1e-5)
