"""Two JAX processes on localhost (jax.distributed, two fake CPU devices each) run PPO and GRPO
iterations — per-host prompt slices, host-side text rewards — equal to one process."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from rl_testing import rl_config
from test_distributed import _free_port
from test_ppo import artifacts  # noqa: F401

from rlhf_jax.training import ppo as ppo_lib

WORKER = pathlib.Path(__file__).with_name("distributed_rl_worker.py")


@pytest.mark.parametrize("estimator", ["gae", "grpo"])
def test_two_processes_run_rl_as_one(artifacts, tmp_path, estimator):  # noqa: F811
    port, out = _free_port(), tmp_path / "multi" / "result.json"
    out.parent.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("XLA_FLAGS")}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                str(i),
                "2",
                str(port),
                str(out),
                str(artifacts),
                estimator,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]
    multi = json.loads(out.read_text())
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
