"""Judging policies outside training: sampling, the judge's sources, KL, win rates, report."""

import json

import numpy as np
import pytest
from test_ppo import PROMPTS, TOKENIZER, artifacts  # noqa: F401

from rlhf_jax import rewards, sharding
from rlhf_jax.placement import ModelSource
from rlhf_jax.policy_eval import PolicyEvalConfig, evaluate_policies


def _config(artifacts, run_dir, **overrides):  # noqa: F811
    sft = {"artifact": str(artifacts / "sft"), "tokenizer": TOKENIZER}
    warm = dict(sft, dtype="float32")
    fields = dict(
        run_dir=str(run_dir),
        policies={"sft": sft, "again": warm},
        baseline="sft",
        reward=ModelSource(artifact=str(artifacts / "rm"), tokenizer=TOKENIZER),
        rewards=rewards.RewardsConfig(
            model_weight=0.5,
            functions=("exact_match", "length_penalty"),
            weights=(2.0, 1.0),
            kwargs={"exact_match": {"column": "completion"}},
        ),
        prompts=PROMPTS,
        prompt_length=8,
        num_prompts=12,
        samples_per_prompt=2,
        response_length=6,
        batch_size=8,
        mesh=sharding.MeshConfig(num_devices=1),
    )
    return PolicyEvalConfig(**{**fields, **overrides})


def test_policies_are_sampled_judged_and_compared(artifacts, tmp_path):  # noqa: F811
    out = evaluate_policies(_config(artifacts, tmp_path))
    sft, again = out["policies"]["sft"], out["policies"]["again"]
    assert sft["kl"] == 0.0  # the reference is the baseline itself
    assert abs(again["kl"]) < 1e-5  # the same weights: log π − log π_ref = 0 on any sample
    for s in (sft, again):
        want = 0.5 * s["rewards/reward_model"] + 2.0 * s["rewards/exact_match"]
        want += s["rewards/length_penalty"]
        np.testing.assert_allclose(s["score"], want, rtol=1e-9)
        np.testing.assert_allclose(s["rewards/length_penalty"], -s["length"] / 6, rtol=1e-6)
        assert 0.0 <= s["eos_fraction"] <= 1.0
    w = out["win_rates"]["again vs sft"]
    assert w["n"] == 12 and w["wins"] + w["ties"] + w["losses"] == 12
    assert (tmp_path / "report.md").read_text().count("again vs sft") >= 1
    assert json.loads((tmp_path / "summary.json").read_text())["policies"]["sft"]["kl"] == 0.0
    assert len(out["samples"]["sft"]) == 8 and "response" in out["samples"]["sft"][0]


def test_evaluation_config_errors_name_the_field(artifacts, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match="baseline='ppo'"):
        _config(artifacts, tmp_path, baseline="ppo")
    with pytest.raises(ValueError, match="reference='dpo'"):
        _config(artifacts, tmp_path, reference="dpo")
    with pytest.raises(ValueError, match="judge needs"):
        _config(artifacts, tmp_path, reward=None, rewards=rewards.RewardsConfig())


def test_the_evaluate_config_file_builds():
    import importlib.util
    import pathlib

    from rlhf_jax.training.config import build

    path = pathlib.Path(__file__).resolve().parents[1] / "configs" / "evaluate.py"
    spec = importlib.util.spec_from_file_location("config_evaluate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = build(PolicyEvalConfig, module.get_config("smoke").to_dict())
    assert set(config.policies) == {"sft", "dpo", "ppo"} and config.baseline == "sft"
