"""PPO: one iteration's invariants, sharding, resume, RLOO/GRPO, the EOS penalty."""

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from training_testing import TINY

from rlhf_jax import checkpoint as ckpt_lib
from rlhf_jax import models, sharding
from rlhf_jax.training import phase as phase_lib
from rlhf_jax.training import ppo as ppo_lib
from rlhf_jax.training import ppo_runner
from rlhf_jax.training.state import OptimizerConfig, split_model

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOKENIZER = str(ROOT / "configs" / "smoke_data" / "tokenizer")
PROMPTS = str(ROOT / "configs" / "smoke_data" / "sft.jsonl")
# The smoke tokenizer has 18 tokens; EOS is id 2.
MODEL = dataclasses.replace(TINY, vocab_size=32, eos_token_ids=(2,))


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ppo_models")
    lm = models.CausalLM(MODEL, rngs=nnx.Rngs(0))
    rm = models.ScalarModel(MODEL, kind="reward", rngs=nnx.Rngs(1))
    config = phase_lib.model_config_to_dict(MODEL)
    ckpt_lib.save_artifact(root / "sft", split_model(lm)[1], meta={"head": "lm", "model": config})
    ckpt_lib.save_artifact(
        root / "rm", split_model(rm)[1], meta={"head": "reward", "model": config}
    )
    return root


def _config(artifacts, run_dir, *, mesh=None, optimizer="adamw", **ppo_overrides):
    opt = OptimizerConfig(learning_rate=1e-3, schedule="constant", name=optimizer)
    ppo = ppo_lib.PPOConfig(
        response_length=6,
        ppo_epochs=2,
        num_minibatches=2,
        policy_optimizer=opt,
        critic_optimizer=opt,
        **ppo_overrides,
    )
    return ppo_runner.PPORunConfig(
        run_dir=str(run_dir),
        policy=phase_lib.ModelSource(artifact=str(artifacts / "sft"), tokenizer=TOKENIZER),
        reward=phase_lib.ModelSource(artifact=str(artifacts / "rm"), tokenizer=TOKENIZER),
        prompts=PROMPTS,
        prompt_length=8,
        prompts_per_iteration=8,
        iterations=3,
        reward_norm_prompts=16,
        ppo=ppo,
        mesh=mesh or sharding.MeshConfig(num_devices=1),
        checkpoint=ckpt_lib.CheckpointConfig(save_every=1, keep=2),
        console=False,
        tensorboard=False,
    )


def test_iterations_keep_ppo_invariants(artifacts, tmp_path):
    result = ppo_runner.run_ppo(_config(artifacts, tmp_path))
    assert result["status"] == "finished" and result["iteration"] == 3
    for row in result["history"]:
        # On-policy first minibatch: the ratio is 1 up to float rounding, nothing is clipped.
        assert abs(row["policy/first_ratio_mean"] - 1.0) < 1e-6
        assert row["policy/first_clipfrac"] == 0.0
        for key in ("loss/policy", "loss/value", "objective/kl", "objective/scores"):
            assert np.isfinite(row[key]), key
    initial = ckpt_lib.load_artifact(
        artifacts / "sft", jax.tree.map(np.asarray, result["state"].frozen["reference"])
    )[0]
    changed = [
        not np.allclose(a, b)
        for a, b in zip(
            jax.tree.leaves(initial), jax.tree.leaves(result["state"].policy), strict=True
        )
    ]
    assert any(changed)
    # The reference stays frozen.
    for a, b in zip(
        jax.tree.leaves(initial), jax.tree.leaves(result["state"].frozen["reference"]), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    # Each program traced once for the fixed shapes.
    for name in ("rollout", "score", "update"):
        assert result["fns"][name]._cache_size() == 1, name
    assert ckpt_lib.artifact_exists(tmp_path / "artifact")
    expected = {
        "objective/kl",
        "objective/entropy",
        "objective/non_score_reward",
        "objective/rlhf_reward",
        "objective/scores",
        "policy/approxkl",
        "policy/clipfrac",
        "policy/entropy",
        "loss/policy",
        "loss/value",
        "val/clipfrac",
        "val/ratio",
        "val/explained_variance",
        "kl_coef",
        "lr",
        "response_length",
        "no_eos_fraction",
        "episodes_per_second",
        "time/rollout",
        "time/scoring",
        "time/update",
    }
    assert expected <= set(result["history"][0])


def test_sharded_iteration_matches_single_device(artifacts, tmp_path):
    one = ppo_runner.run_ppo(_config(artifacts, tmp_path / "one", optimizer="sgd"))
    eight = ppo_runner.run_ppo(
        _config(
            artifacts,
            tmp_path / "eight",
            optimizer="sgd",
            mesh=sharding.MeshConfig(data=2, fsdp=2, tensor=2),
        )
    )
    for a, b in zip(one["history"], eight["history"], strict=True):
        for key in ("objective/scores", "loss/policy", "loss/value", "objective/kl"):
            np.testing.assert_allclose(b[key], a[key], rtol=1e-4, atol=1e-5, err_msg=key)
    for a, b in zip(
        jax.tree.leaves(one["state"].policy), jax.tree.leaves(eight["state"].policy), strict=True
    ):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)


def test_resume_continues_exactly(artifacts, tmp_path):
    full = ppo_runner.run_ppo(_config(artifacts, tmp_path / "full"))
    cut = _config(artifacts, tmp_path / "cut")
    first = ppo_runner.run_ppo(cut, stop_after=1)
    assert first["status"] == "interrupted"
    second = ppo_runner.run_ppo(cut)
    assert second["iteration"] == 3 and len(second["history"]) == 2
    for a, b in zip(
        jax.tree.leaves(full["state"].policy), jax.tree.leaves(second["state"].policy), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(full["state"].kl.coef, second["state"].kl.coef)
    np.testing.assert_array_equal(full["state"].score_norm, second["state"].score_norm)


@pytest.mark.parametrize("estimator", ["rloo", "grpo"])
def test_group_estimators_need_no_critic(artifacts, tmp_path, estimator):
    # GRPO as usually run: KL in the loss (k3) rather than in the reward.
    extra = {"kl_in_loss": True, "kl_estimator": "k3"} if estimator == "grpo" else {}
    config = _config(
        artifacts, tmp_path, advantage_estimator=estimator, samples_per_prompt=4, **extra
    )
    config = dataclasses.replace(config, prompts_per_iteration=4, iterations=2)
    result = ppo_runner.run_ppo(config)
    assert result["state"].critic is None
    row = result["history"][0]
    assert abs(row["policy/first_ratio_mean"] - 1.0) < 1e-6 and "loss/value" not in row
    for row in result["history"]:
        assert np.isfinite(row["loss/policy"]) and np.isfinite(row["objective/kl"])
    if estimator == "grpo":  # with KL in the loss, the rewards carry no KL term
        assert all(row["objective/non_score_reward"] == 0.0 for row in result["history"])
        assert result["history"][-1]["objective/kl"] != 0.0


def test_group_estimators_validate_k():
    with pytest.raises(ValueError, match="samples_per_prompt"):
        ppo_lib.PPOConfig(advantage_estimator="rloo", samples_per_prompt=1)


def test_missing_eos_penalty_and_score_on_last_token():
    response = jnp.array([[5, 2, 0, 0], [5, 6, 7, 8]])
    mask = jnp.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool)
    assert ppo_lib.has_eos(response, mask, (2,)).tolist() == [True, False]
    rewards, _ = __import__("rlhf_jax").losses.kl_shaped_rewards(
        jnp.array([0.5, -1.0]), jnp.zeros((2, 4)), jnp.zeros((2, 4)), mask, kl_coef=0.1
    )
    np.testing.assert_array_equal(rewards, [[0, 0.5, 0, 0], [0, 0, 0, -1.0]])


def test_adaptive_kl_controller_holds_kl_near_target(artifacts, tmp_path):
    """A policy pushed hard (high learning rate) drifts from the reference; the adaptive
    controller raises β while KL is above target and lowers it below."""
    config = _config(artifacts, tmp_path, kl_target=0.5, kl_horizon=40.0, kl_coef=0.05)
    opt = OptimizerConfig(learning_rate=3e-3, schedule="constant")
    config = dataclasses.replace(
        config,
        iterations=16,
        ppo=dataclasses.replace(config.ppo, policy_optimizer=opt, critic_optimizer=opt),
        checkpoint=ckpt_lib.CheckpointConfig(save_every=100),
    )
    history = ppo_runner.run_ppo(config)["history"]
    kl = np.array([row["objective/kl"] for row in history])
    coef = np.array([row["kl_coef"] for row in history])
    # Row i logs the β its rewards used; the update after it moves β the way KL_i − target says.
    assert np.all(np.sign(np.diff(coef)) == np.sign(kl[:-1] - 0.5))
    assert coef.max() > 0.05  # KL went above target and β answered
    assert np.mean(kl[-6:]) < 4 * 0.5, kl


def test_shared_trunk_value_head(artifacts, tmp_path):
    """value_model="shared": the value head reads the policy's hidden states; the value loss
    trains the shared trunk through the policy optimizer and the head through the critic's."""
    config = _config(artifacts, tmp_path, value_model="shared")
    config = dataclasses.replace(config, iterations=2)
    result = ppo_runner.run_ppo(config)
    state = result["state"]
    assert set(state.critic.keys()) == {"kernel", "bias"}  # the head alone, no second trunk
    assert np.any(np.asarray(state.critic["kernel"].get_value()) != 0)  # the head learned
    for row in result["history"]:
        assert abs(row["policy/first_ratio_mean"] - 1.0) < 1e-6
        assert np.isfinite(row["loss/value"]) and np.isfinite(row["val/explained_variance"])
    with pytest.raises(ValueError, match="value_model"):
        ppo_lib.PPOConfig(value_model="twin")
