"""PPO's score from several sources, GRPO on reward functions alone, dynamic sampling, the
policy-loss variants inside an iteration, and the errors a user can cause."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_ppo import PROMPTS, _config, _iteration_parts, artifacts  # noqa: F401

from rlhf_jax import rewards
from rlhf_jax.training import ppo as ppo_lib

CALLS = []


def starts_with_nine(*, prompts, completions, completion, **_):
    """A text reward reading the dataset's "completion" column: 1 when the response begins
    with the reference's first word."""
    CALLS.append(len(completions))
    return [
        float(c.split()[:1] == r.split()[:1]) for c, r in zip(completions, completion, strict=True)
    ]


def broken(*, prompts, completions, **_):
    return [1.0] * (len(completions) - 1) + [float("inf")]


HERE = "test_ppo_rewards"


def _with(config, **changes):
    return dataclasses.replace(config, **changes)


def test_reward_model_text_and_token_functions_add_up(artifacts, tmp_path):  # noqa: F811
    sources = rewards.RewardsConfig(
        model_weight=0.5,
        functions=(f"{HERE}.starts_with_nine", "length_penalty"),
        weights=(2.0, 1.0),
    )
    config = _with(_config(artifacts, tmp_path), rewards=sources, iterations=2)
    result = ppo_lib.run_ppo(config)
    row = result["history"][0]
    for name in ("reward_model", f"{HERE}.starts_with_nine", "length_penalty"):
        assert np.isfinite(row[f"rewards/{name}/mean"]), name
    assert CALLS and CALLS[-1] == 8  # one call per rollout, the whole batch
    # The score is the weighted sum: check it on one rollout with a fixed normalisation.
    _, state, statics, fns, tokens, mask = _iteration_parts(artifacts, tmp_path / "x")
    statics = dataclasses.replace(
        statics, reward_weight=0.5, token_rewards=(rewards.resolve_sources(sources)[1],)
    )
    state = state.replace(score_norm=jnp.array([2.0, 0.1], jnp.float32))
    episodes = fns["rollout"](state, tokens, mask)
    host = jnp.linspace(0.0, 1.0, 8, dtype=jnp.float32)
    total, raw, parts = ppo_lib.combined_scores(state, episodes, host, statics=statics)
    lengths = np.asarray(episodes["response_mask_BxN"]).sum(-1)
    want = 0.5 * 2.0 * (np.asarray(raw, np.float64) - 0.1) - lengths / 6 + np.asarray(host)
    np.testing.assert_allclose(total, want, rtol=1e-5, atol=1e-6)
    assert set(parts) == {"reward_model", "length_penalty"}


def test_grpo_on_reward_functions_alone(artifacts, tmp_path):  # noqa: F811
    config = _config(
        artifacts, tmp_path, advantage_estimator="grpo", samples_per_prompt=4, value_init="policy"
    )
    config = _with(
        config,
        reward=None,
        prompts_per_iteration=4,
        iterations=2,
        rewards=rewards.RewardsConfig(
            functions=("exact_match",), kwargs={"exact_match": {"column": "completion"}}
        ),
    )
    result = ppo_lib.run_ppo(config)
    assert result["statics"].reward is None and result["state"].critic is None
    assert result["reward_norm"] == {}  # nothing to normalise without a reward model
    for row in result["history"]:
        assert row["kl_coef"] == 0.0  # GRPO's default β
        assert "rewards/exact_match/mean" in row and "rewards/reward_model/mean" not in row
        assert np.isfinite(row["loss/policy"])


def test_a_text_reward_that_fails_is_named_with_its_row(artifacts, tmp_path):  # noqa: F811
    sources = rewards.RewardsConfig(functions=(f"{HERE}.broken",))
    config = _with(_config(artifacts, tmp_path), rewards=sources, iterations=1)
    with pytest.raises(ValueError, match=r"'test_ppo_rewards\.broken': completion 7 \(prompt row"):
        ppo_lib.run_ppo(config)


def test_config_errors_name_the_fields(artifacts, tmp_path):  # noqa: F811
    base = _config(artifacts, tmp_path)
    check = ppo_lib.reward_sources
    with pytest.raises(ValueError, match=r"set reward .* or rewards\.functions"):
        check(_with(base, reward=None))
    with pytest.raises(ValueError, match="value_init='reward'"):
        check(
            _with(base, reward=None, rewards=rewards.RewardsConfig(functions=("length_penalty",)))
        )
    fused = dataclasses.replace(base.ppo, fuse_iteration=True)
    with pytest.raises(ValueError, match="fuse_iteration"):
        check(_with(base, ppo=fused, rewards=rewards.RewardsConfig(functions=(f"{HERE}.broken",))))
    # A reward function given as an object counts as a source.
    length = rewards.WeightedFunction(rewards.resolve("length_penalty"), 1.0)
    assert check(
        _with(base, reward=None, ppo=dataclasses.replace(base.ppo, value_init="policy")), (length,)
    )
    with pytest.raises(ValueError, match="dynamic_sampling"):
        ppo_lib.PPOConfig(dynamic_sampling=True)
    with pytest.raises(ValueError, match="gspo_token"):
        ppo_lib.PPOConfig(policy_loss="gspo", tis_cap=2.0)


def test_prompts_too_long_are_counted_and_left_out(artifacts, tmp_path, capsys):  # noqa: F811
    rows = [json.loads(line) for line in open(PROMPTS)]
    rows[0]["prompt"] = " ".join(["one"] * 20)  # 21 tokens with BOS: over prompt_length 8
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = _with(_config(artifacts, tmp_path / "run"), prompts=str(path), iterations=1)
    result = ppo_lib.run_ppo(config)
    assert result["prompts"].num_dropped == 1 and 0 not in result["prompts"].kept_N
    assert f"{len(rows)} rows, {len(rows) - 1} used, 1 longer than prompt_length=8" in (
        capsys.readouterr().out
    )
    with pytest.raises(ValueError, match=r"none of its .* prompts fits"):
        ppo_lib.run_ppo(_with(config, prompt_length=2, run_dir=str(tmp_path / "r2")))


def test_dynamic_sampling_keeps_informative_groups(artifacts, tmp_path):  # noqa: F811
    # Group g of K=2 agrees (uninformative) unless its scores differ; the sampler refills.
    k = 2
    scores = np.array([1, 1, 0, 1, 3, 3, 2, 5], np.float64)  # groups: same, diff, same, diff
    informative = ppo_lib.sampling.informative_groups(scores, k)
    np.testing.assert_array_equal(informative, [False, True, False, True])
    episodes = {"x": jnp.arange(8), "parts": {"y": jnp.arange(8) * 10}}
    batch, info = ppo_lib.sampling.assemble([(episodes, informative)] * 2, groups=3, k=k)
    # Both rounds' informative groups (1, 3 | 1, 3) fill three slots; nothing uninformative.
    np.testing.assert_array_equal(batch["x"], [2, 3, 6, 7, 2, 3])
    np.testing.assert_array_equal(batch["parts"]["y"], np.array([2, 3, 6, 7, 2, 3]) * 10)
    assert info["dynamic/dropped_groups"] == 4 and info["dynamic/surplus_groups"] == 1
    _, short = ppo_lib.sampling.assemble([(episodes, informative)], groups=3, k=k)
    assert short["dynamic/uninformative_kept"] == 1 and short["dynamic/dropped_groups"] == 1

    config = _config(
        artifacts, tmp_path, advantage_estimator="grpo", samples_per_prompt=4,
        dynamic_sampling=True, max_sampling_rounds=3,
    )  # fmt: skip
    config = _with(config, prompts_per_iteration=4, iterations=2)
    result = ppo_lib.run_ppo(config)
    for row in result["history"]:
        assert 1 <= row["dynamic/rounds"] <= 3
        assert row["dynamic/dropped_groups"] >= 0 and np.isfinite(row["loss/policy"])
    assert result["fns"]["update"]._cache_size() == 1  # the assembled batch keeps its shape


@pytest.mark.parametrize(
    "loss, extra",
    [("gspo", {"clip_eps": 3e-4, "clip_eps_high": 4e-4}), ("gspo_token", {"tis_cap": 2.0}),
     ("cispo", {"clip_eps": 1.0, "clip_eps_high": 0.28})],
)  # fmt: skip
def test_policy_loss_variants_run_on_policy(artifacts, tmp_path, loss, extra):  # noqa: F811
    config = _config(
        artifacts, tmp_path, advantage_estimator="grpo", samples_per_prompt=4,
        policy_loss=loss, **extra,
    )  # fmt: skip
    result = ppo_lib.run_ppo(_with(config, prompts_per_iteration=4, iterations=2))
    for row in result["history"]:
        # The first minibatch is on-policy: every ratio (token or sequence) is 1.
        assert abs(row["policy/first_ratio_mean"] - 1.0) < 1e-5
        assert row["policy/first_clipfrac"] == 0.0 and np.isfinite(row["loss/policy"])
    changed = jax.tree.leaves(
        jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                     result["state"].policy, result["state"].frozen["reference"])
    )  # fmt: skip
    assert any(changed)


def word_count(*, prompts, completions, **_):
    """A text monitor feature: words per decoded response."""
    return [float(len(c.split())) for c in completions]


def test_monitor_features_reach_the_monitor_and_never_the_score(artifacts, tmp_path):  # noqa: F811
    from rlhf_jax import evaluation as ev

    plain = ppo_lib.run_ppo(_with(_config(artifacts, tmp_path / "plain"), iterations=2))
    seen = []

    class Recording(ev.HackingMonitor):
        def update(self, iteration, stats, **kw):
            seen.append(stats["features"])
            return super().update(iteration, stats, **kw)

    monitor = Recording()
    config = _with(
        _config(artifacts, tmp_path / "features"),
        iterations=2,
        monitor_features=(f"{HERE}.word_count",),
    )
    negative_length = rewards.RewardFunction("short", "tokens", rewards.length_penalty)
    result = ppo_lib.run_ppo(config, monitor=monitor, features=(negative_length,))
    for a, b in zip(plain["history"], result["history"], strict=True):
        # the same run: features are computed beside the score, not in it
        assert a["objective/scores"] == b["objective/scores"]
        assert a["loss/policy"] == b["loss/policy"]
    assert len(seen) == 2 and set(seen[0]) == {"word_count", "short"}
    # a run given no monitor still runs the gold-free ones, and says what they saw
    summary = json.loads((tmp_path / "plain" / "monitors.json").read_text())
    assert summary["updates"] == 2 and "length_mean" in summary["baseline"]
    assert "monitor/length_drift" in plain["history"][0]
    for row, features in zip(result["history"], seen, strict=True):
        assert features["word_count"].shape == (8,)
        np.testing.assert_allclose(row["features/short/mean"], -row["response_length"] / 6, 1e-6)
        assert row["features/word_count/mean"] == pytest.approx(features["word_count"].mean())
        assert {"monitor/word_count_drift", "monitor/proxy_short_corr"} <= set(row)
    with pytest.raises(ValueError, match=r"'length' .*own monitors"):
        ppo_lib.run_ppo(
            _with(config, run_dir=str(tmp_path / "bad")),
            features=(rewards.RewardFunction("length", "tokens", rewards.length_penalty),),
        )
    fused = _with(config, run_dir=str(tmp_path / "fused"))
    fused = _with(fused, ppo=dataclasses.replace(fused.ppo, fuse_iteration=True))
    with pytest.raises(ValueError, match="text monitor features"):
        ppo_lib.run_ppo(fused)
