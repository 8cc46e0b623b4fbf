"""PPO: one iteration's invariants, sharding, resume, RLOO/GRPO, the EOS penalty, the
non-finite guard, and each option against the plain path."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from training_testing import TINY

from rlhf_jax import checkpoint as ckpt_lib
from rlhf_jax import data, models, presets, sharding
from rlhf_jax.placement import ModelSource, split_model
from rlhf_jax.training import ppo as ppo_lib
from rlhf_jax.training.loop import NonFiniteError
from rlhf_jax.training.optimizer import OptimizerConfig

TOKENIZER = str(presets.SMOKE_DATA / "tokenizer")
PROMPTS = str(presets.SMOKE_DATA / "sft.jsonl")
# The smoke tokenizer has 18 tokens; EOS is id 2.
MODEL = dataclasses.replace(TINY, vocab_size=32, eos_token_ids=(2,))


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ppo_models")
    lm = models.CausalLM(MODEL, rngs=nnx.Rngs(0))
    rm = models.ScalarModel(MODEL, kind="reward", rngs=nnx.Rngs(1))
    config = MODEL.to_dict()
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
        reward_norm_prompts=16,
        policy_optimizer=opt,
        critic_optimizer=opt,
        **ppo_overrides,
    )
    return ppo_lib.PPORunConfig(
        run_dir=str(run_dir),
        policy=ModelSource(artifact=str(artifacts / "sft"), tokenizer=TOKENIZER),
        reward=ModelSource(artifact=str(artifacts / "rm"), tokenizer=TOKENIZER),
        prompts=PROMPTS,
        prompt_length=8,
        prompts_per_iteration=8,
        iterations=3,
        ppo=ppo,
        mesh=mesh or sharding.MeshConfig(num_devices=1),
        checkpoint=ckpt_lib.CheckpointConfig(save_every=1, keep=2),
        console=False,
        tensorboard=False,
    )


def test_iterations_keep_ppo_invariants(artifacts, tmp_path):
    result = ppo_lib.run_ppo(_config(artifacts, tmp_path))
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
    one = ppo_lib.run_ppo(_config(artifacts, tmp_path / "one", optimizer="sgd"))
    eight = ppo_lib.run_ppo(
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
    full = ppo_lib.run_ppo(_config(artifacts, tmp_path / "full"))
    cut = _config(artifacts, tmp_path / "cut")
    first = ppo_lib.run_ppo(cut, stop_after=1)
    assert first["status"] == "interrupted"
    second = ppo_lib.run_ppo(cut)
    assert second["iteration"] == 3
    # The history is the whole run's, once each, in the result and in history.jsonl.
    assert [row["iteration"] for row in second["history"]] == [1, 2, 3]
    lines = (tmp_path / "cut" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [1, 2, 3]
    for a, b in zip(full["history"], second["history"], strict=True):
        assert (
            a["objective/scores"] == b["objective/scores"] and a["loss/policy"] == b["loss/policy"]
        )
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
    result = ppo_lib.run_ppo(config)
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
    history = ppo_lib.run_ppo(config)["history"]
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
    result = ppo_lib.run_ppo(config)
    state = result["state"]
    assert set(state.critic.keys()) == {"kernel", "bias"}  # the head alone, no second trunk
    assert np.any(np.asarray(state.critic["kernel"].get_value()) != 0)  # the head learned
    for row in result["history"]:
        assert abs(row["policy/first_ratio_mean"] - 1.0) < 1e-6
        assert np.isfinite(row["loss/value"]) and np.isfinite(row["val/explained_variance"])
    with pytest.raises(ValueError, match="value_model"):
        ppo_lib.PPOConfig(value_model="twin")


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def _same(a, b, **tol):
    for x, y in zip(_leaves(a), _leaves(b), strict=True):
        if tol:
            np.testing.assert_allclose(x, y, **tol)
        else:
            np.testing.assert_array_equal(x, y)


def _iteration_parts(artifacts, tmp_path, **ppo_overrides):
    """A PPO state on one device, its programs, and one rollout's prompts."""
    config = _config(artifacts, tmp_path, **ppo_overrides)
    mesh = sharding.make_mesh(config.mesh)
    state, shardings, statics, _, tokenizer = ppo_lib.init_ppo_state(config, mesh)
    fns = ppo_lib.build_iteration(statics, config.ppo, shardings, iterations=config.iterations)
    prompts = data.load_prompts(PROMPTS)[:8]
    tokens, mask = models.encode_prompts(tokenizer, prompts, max_length=8)
    return config, state, statics, fns, jnp.asarray(tokens), jnp.asarray(mask)


def test_a_nonfinite_update_leaves_the_state_unchanged(artifacts, tmp_path):
    _, state, _, fns, tokens, mask = _iteration_parts(artifacts, tmp_path)
    episodes, _, _ = fns["score"](state, fns["rollout"](state, tokens, mask))
    before = jax.device_get((state.policy, state.critic, state.policy_opt, state.kl))
    bad = dict(episodes, advantages_BxN=episodes["advantages_BxN"].at[0, 0].set(jnp.nan))
    state, metrics = fns["update"](state, bad)
    _same(before, (state.policy, state.critic, state.policy_opt, state.kl))
    assert int(state.step) == 1 and int(state.nonfinite_count) == 1
    assert int(state.first_nonfinite_step) == 0 and float(metrics["nonfinite_updates"]) == 1.0
    state, _ = fns["update"](state, episodes)  # a finite one is applied
    assert int(state.nonfinite_count) == 1
    pairs = zip(_leaves(before[0]), _leaves(state.policy), strict=True)
    assert any(not np.array_equal(a, b) for a, b in pairs)


def _poison_second_update(monkeypatch):
    """Makes the runner's update program see NaN advantages in its second call."""
    build = ppo_lib.runner.build_iteration

    def poisoned_build(*args, **kwargs):
        fns = build(*args, **kwargs)
        update, calls = fns["update"], []

        def update_poisoning_the_second(state, episodes):
            calls.append(1)
            if len(calls) == 2:
                episodes = dict(episodes, advantages_BxN=episodes["advantages_BxN"] * jnp.nan)
            return update(state, episodes)

        return dict(fns, update=update_poisoning_the_second)

    monkeypatch.setattr(ppo_lib.runner, "build_iteration", poisoned_build)


def test_a_nonfinite_iteration_stops_the_run_naming_it_and_the_last_checkpoint_resumes(
    artifacts, tmp_path, monkeypatch
):
    good = ppo_lib.run_ppo(_config(artifacts, tmp_path / "good"))
    config = _config(artifacts, tmp_path / "bad")
    with monkeypatch.context() as patch:
        _poison_second_update(patch)
        with pytest.raises(NonFiniteError, match="in iteration 2"):
            ppo_lib.run_ppo(config)
        skip = dataclasses.replace(config, run_dir=str(tmp_path / "skip"), skip_nonfinite=True)
        skipped = ppo_lib.run_ppo(skip)
    checkpoints = ckpt_lib.PhaseCheckpointer(
        tmp_path / "bad" / "checkpoints", fingerprint={}, config=config.checkpoint
    )
    assert checkpoints.latest_step() == 1  # nothing was saved after the refused update
    assert not ckpt_lib.artifact_exists(tmp_path / "bad" / "artifact")
    # The checkpoint holds the good first iteration: resuming from it reproduces the
    # uninterrupted run exactly.
    resumed = ppo_lib.run_ppo(config)
    assert resumed["status"] == "finished" and len(resumed["history"]) == 3
    _same(good["state"].policy, resumed["state"].policy)
    # With skip_nonfinite the run goes on and counts the refused iteration.
    assert skipped["status"] == "finished"
    assert [row["nonfinite_updates"] for row in skipped["history"]] == [0.0, 1.0, 1.0]


def test_gradient_accumulation_equals_the_whole_minibatch(artifacts, tmp_path):
    one = ppo_lib.run_ppo(_config(artifacts, tmp_path / "one", optimizer="sgd"))
    two = ppo_lib.run_ppo(_config(artifacts, tmp_path / "two", optimizer="sgd", grad_accum_steps=2))
    for a, b in zip(one["history"], two["history"], strict=True):
        for key in ("loss/policy", "loss/value", "objective/kl", "policy/approxkl"):
            np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-6, err_msg=key)
    _same(one["state"].policy, two["state"].policy, rtol=1e-5, atol=1e-6)
    _same(one["state"].critic, two["state"].critic, rtol=1e-5, atol=1e-6)


def test_fused_iteration_equals_the_three_programs(artifacts, tmp_path):
    three = ppo_lib.run_ppo(_config(artifacts, tmp_path / "three", optimizer="sgd"))
    fused = ppo_lib.run_ppo(
        _config(artifacts, tmp_path / "fused", optimizer="sgd", fuse_iteration=True)
    )
    assert "time/rollout" in three["history"][0] and "time/rollout" not in fused["history"][0]
    for a, b in zip(three["history"], fused["history"], strict=True):
        for key in ("objective/scores", "loss/policy", "loss/value", "objective/kl"):
            np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-6, err_msg=key)
    _same(three["state"].policy, fused["state"].policy, rtol=1e-5, atol=1e-6)
    assert fused["fns"]["fused"]._cache_size() == 1  # the second iteration reused the first's


def _scores(artifacts, tmp_path, episodes=None, **overrides):
    """``score`` of one rollout (or of ``episodes``) under ``overrides``, with a fixed reward
    normalisation (gain 2, bias 0.1) so that each option's effect can be computed by hand."""
    config, state, statics, fns, tokens, mask = _iteration_parts(artifacts, tmp_path, **overrides)
    state = state.replace(score_norm=jnp.array([2.0, 0.1], jnp.float32))
    if episodes is None:
        episodes = fns["rollout"](state, tokens, mask)
    scored = ppo_lib.score(state, episodes, statics=statics, config=config.ppo)
    return episodes, jax.device_get(scored)


def test_whitened_and_clipped_scores_against_the_plain_path(artifacts, tmp_path):
    episodes, plain = _scores(artifacts, tmp_path / "p", missing_eos_penalty=None)
    s = 2.0 * (np.asarray(plain["raw_scores_B"], np.float64) - 0.1)
    np.testing.assert_allclose(plain["scores_B"], s, rtol=1e-6)
    _, white = _scores(
        artifacts, tmp_path / "w", episodes, missing_eos_penalty=None, whiten_scores=True
    )
    # Whitened without a mean shift: unit variance, the mean kept.
    np.testing.assert_allclose(white["scores_B"], (s - s.mean()) / s.std() + s.mean(), rtol=1e-5)
    _, clipped = _scores(
        artifacts, tmp_path / "c", episodes, missing_eos_penalty=None, score_clip=0.05
    )
    assert np.any(np.abs(s) > 0.05)  # the clip has something to do
    np.testing.assert_allclose(clipped["scores_B"], np.clip(s, -0.05, 0.05), rtol=1e-6)
    # The scores are what GAE reads: other scores, other advantages.
    assert not np.array_equal(clipped["advantages_BxN"], plain["advantages_BxN"])


def test_missing_eos_penalty_through_score(artifacts, tmp_path):
    episodes, _ = _scores(artifacts, tmp_path / "r")
    # Row 0 ends with EOS (id 2) at its second token; row 1 never does.
    response = np.asarray(episodes["response_BxN"]).copy()
    rmask = np.ones_like(response, bool)
    response[0, :2] = [5, 2]
    rmask[0, 2:] = False
    response[1] = 7
    episodes = dict(
        episodes, response_BxN=jnp.asarray(response), response_mask_BxN=jnp.asarray(rmask)
    )
    _, kept = _scores(artifacts, tmp_path / "k", episodes, missing_eos_penalty=None)
    _, penalised = _scores(artifacts, tmp_path / "e", episodes, missing_eos_penalty=-3.0)
    eos = np.asarray(penalised["has_eos_B"])
    assert eos[0] and not eos[1]
    np.testing.assert_array_equal(eos, ppo_lib.has_eos(response, rmask, (2,)))
    np.testing.assert_array_equal(penalised["scores_B"], np.where(eos, kept["scores_B"], -3.0))
    # Only the score moved: raw scores and the KL (policy = reference) are the same.
    np.testing.assert_array_equal(penalised["raw_scores_B"], kept["raw_scores_B"])
    np.testing.assert_allclose(penalised["kl_BxN"], 0.0, atol=1e-6)


def test_the_monitors_state_survives_a_resume(artifacts, tmp_path):
    from rlhf_jax import evaluation as ev

    # Thresholds that fire (the tiny policy's length and entropy move fast), so that the
    # warnings as well as the running statistics must carry over.
    config = ev.MonitorConfig(window=2, max_length_drift=0.0, max_kl_rate=0.0)
    full_monitor = ev.HackingMonitor(config)
    ppo_lib.run_ppo(_config(artifacts, tmp_path / "full"), monitor=full_monitor)
    cut = _config(artifacts, tmp_path / "cut")
    ppo_lib.run_ppo(cut, monitor=ev.HackingMonitor(config), stop_after=1)
    resumed_monitor = ev.HackingMonitor(config)
    ppo_lib.run_ppo(cut, monitor=resumed_monitor)
    assert resumed_monitor.summary() == full_monitor.summary()
    assert full_monitor.summary()["updates"] == 3 and full_monitor.warnings
