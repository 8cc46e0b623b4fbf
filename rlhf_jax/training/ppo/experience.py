"""A PPO iteration's experience: rollout (sample responses), then score them.

    rollout  sample N tokens per prompt with the policy at temperature T (fixed length: the
             response is cut after its first EOS and padded)
    score    re-score policy and reference log-probs (logits ÷ T, the sampling distribution),
             critic values, each response's score — the weighted sum of the reward model's
             (normalised with a gain and bias fitted on SFT samples), the jittable reward
             functions' and the host's text functions' (computed between rollout and score);
             a fixed score for responses with no EOS — per-token rewards r_t = −β·KL_t (+ score
             at the last token), GAE (γ, λ) or group baselines, and whitened advantages

Letters: B episodes (prompts × K samples), P prompt length (left-padded), N response length,
L = P + N, D width, V vocabulary, K samples per prompt.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rlhf_jax import losses, rewards
from rlhf_jax.generation import SamplingConfig, sample
from rlhf_jax.models import lora, positions_from_mask
from rlhf_jax.training.ppo.config import PPOConfig, PPOState, Statics


def sequence(episodes):
    """(tokens_BxL, attn_BxL): each prompt followed by its response."""
    tokens = jnp.concatenate([episodes["prompt_BxP"], episodes["response_BxN"]], axis=1)
    attn = jnp.concatenate([episodes["prompt_mask_BxP"], episodes["response_mask_BxN"]], axis=1)
    return tokens, attn


def lm_logprobs(model, tokens_BxL, attn_BxL, response_BxN, response_mask_BxN, t, *, entropy):
    """Log-probs of the response under ``model`` at temperature ``t``, the entropies at its
    positions (with ``entropy``, else None), and the final hidden states (a shared-trunk value
    head reads them). The LM head runs in chunks of rows (`CausalLM.token_logprobs`)."""
    p = tokens_BxL.shape[1] - response_BxN.shape[1]
    h_BxLxD = model.hidden_states(
        tokens_BxL, positions_BxT=positions_from_mask(attn_BxL), attn_mask_BxT=attn_BxL
    )
    # The hidden state at position P − 1 + i predicts response token i.
    stats = model.token_logprobs(
        h_BxLxD[:, p - 1 : -1],
        response_BxN,
        response_mask_BxN.astype(bool),
        temperature=t,
        entropy=entropy,
    )
    return stats.logp_BxN, stats.entropy_BxN, h_BxLxD


def values(critic_params, frozen, tokens_BxL, attn_BxL, h_BxLxD, n, *, statics, config):
    """V at the positions before each response token: from the separate critic's own forward,
    or (``value_model="shared"``) from the value head on the policy's hidden states."""
    critic = nnx.merge(statics.critic, critic_params, frozen["critic_rest"])
    if config.value_model == "shared":
        values_BxL = critic(h_BxLxD)
    else:
        values_BxL = critic(
            tokens_BxL, positions_BxT=positions_from_mask(attn_BxL), attn_mask_BxT=attn_BxL
        )
    return values_BxL[:, -n - 1 : -1]


def rollout(
    state: PPOState,
    prompt_BxP,
    prompt_mask_BxP,
    round_index=None,
    *,
    statics: Statics,
    config: PPOConfig,
):
    """Samples responses; returns the episode batch (tokens and masks), no scores yet.
    ``round_index`` (dynamic sampling's later rollouts of one iteration) draws other samples."""
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    if round_index is not None:
        key = jax.random.fold_in(key, round_index)
    policy = nnx.merge(statics.policy, state.policy, state.frozen["policy_rest"])
    graphdef, params = nnx.split(policy)
    gen = sample(
        graphdef,
        params,
        prompt_BxP,
        prompt_mask_BxP,
        key,
        config=SamplingConfig(
            max_new_tokens=config.response_length,
            temperature=config.temperature,
            eos_ids=statics.eos_ids,
            pad_id=statics.pad_id,
        ),
    )
    return {
        "prompt_BxP": prompt_BxP,
        "prompt_mask_BxP": prompt_mask_BxP.astype(bool),
        "response_BxN": gen.tokens_BxN,
        "response_mask_BxN": gen.mask_BxN,
        "sample_logp_BxN": gen.logprobs_BxN,
    }


def raw_scores(frozen, episodes, *, statics: Statics):
    """The reward model's score of each (prompt, response), before normalisation."""
    tokens, attn = sequence(episodes)
    response_mask = jnp.concatenate(
        [jnp.zeros_like(episodes["prompt_mask_BxP"]), episodes["response_mask_BxN"]], axis=1
    )
    reward_model = nnx.merge(statics.reward, frozen["reward"], frozen["reward_rest"])
    return reward_model.score(
        tokens,
        positions_BxT=positions_from_mask(attn),
        attn_mask_BxT=attn,
        response_mask_BxT=response_mask,
        pooling=statics.reward_pooling,
    )


def has_eos(response_BxN, mask_BxN, eos_ids) -> jax.Array:
    eos = jnp.asarray(eos_ids or (-1,), response_BxN.dtype)
    hit = jnp.any(response_BxN[..., None] == eos[None, None, :], axis=-1) & mask_BxN
    return jnp.any(hit, axis=-1)


def combined_scores(state: PPOState, episodes, host_scores_B, *, statics: Statics):
    """``(score_B, raw reward-model score_B or None, each source's raw values by name)``:
    w_model · gain · (r − bias) + Σ w_f · f over the jittable functions, + the host's sum."""
    parts, total, raw = {}, None, None
    add = lambda x: x if total is None else total + x
    if statics.reward is not None:
        raw = raw_scores(state.frozen, episodes, statics=statics)
        parts[rewards.MODEL] = raw
        normalised = state.score_norm[0] * (raw - state.score_norm[1])
        total = add(
            normalised if statics.reward_weight == 1.0 else statics.reward_weight * normalised
        )
    for wf in statics.token_rewards:
        values = wf.function.fn(
            episodes["prompt_BxP"],
            episodes["prompt_mask_BxP"],
            episodes["response_BxN"],
            episodes["response_mask_BxN"],
        )
        b = episodes["response_BxN"].shape[0]
        if jnp.shape(values) != (b,):
            raise ValueError(f"reward function {wf.name!r} returned shape {jnp.shape(values)}; "
                             f"expected ({b},)")  # fmt: skip
        values = jnp.asarray(values, jnp.float32)
        parts[wf.name] = values
        total = add(values if wf.weight == 1.0 else wf.weight * values)
    if host_scores_B is not None:
        total = add(host_scores_B)
    if total is None:
        raise ValueError("PPO's score has no source: give a reward model or reward functions")
    return total, raw, parts


def shape_scores(scores_B, eos_B, *, config: PPOConfig):
    """The scores PPO optimises: the combined score, the missing-EOS score, then optional
    whitening and clipping."""
    scores = scores_B
    if config.missing_eos_penalty is not None:
        scores = jnp.where(eos_B, scores, config.missing_eos_penalty)
    if config.whiten_scores:
        scores = losses.whiten(scores, jnp.ones_like(scores, bool), shift_mean=False)
    if config.score_clip is not None:
        scores = jnp.clip(scores, -config.score_clip, config.score_clip)
    return scores


def group_advantage(rewards_BxN, mask, *, config: PPOConfig):
    """RLOO/GRPO advantages: each episode's summed reward against its group's."""
    k = config.samples_per_prompt
    seq_reward = jnp.sum(rewards_BxN, axis=-1).reshape(-1, k)
    grpo = config.advantage_estimator == "grpo"
    scale = config.grpo_scale if grpo else "none"
    seq_adv = losses.group_advantages(
        seq_reward,
        baseline="mean" if grpo else "rloo",
        normalize_std=scale != "none",
        std_over="batch" if scale == "batch" else "group",
    ).reshape(-1)
    return jnp.where(mask, seq_adv[:, None], 0.0)


def score(
    state: PPOState,
    episodes,
    host_scores_B=None,
    *,
    statics: Statics,
    config: PPOConfig,
    gold_fn=None,
    feature_fns=(),
):
    """Re-scores the episodes: log-probs, reference log-probs, values, rewards, advantages.
    ``host_scores_B`` is the weighted sum of the text reward functions (None: there are none).
    ``feature_fns`` ((name, token function) pairs) add the monitors' per-episode features to
    ``features_B`` beside any the host computed; they never enter the score."""
    tokens, attn = sequence(episodes)
    response, mask = episodes["response_BxN"], episodes["response_mask_BxN"]
    n, t = response.shape[1], config.temperature
    policy = nnx.merge(statics.policy, state.policy, state.frozen["policy_rest"])
    logp, entropy, hidden = lm_logprobs(policy, tokens, attn, response, mask, t, entropy=True)
    if state.frozen["reference"] is None:  # LoRA: the base, the adapters switched off
        with lora.switched_off(policy):
            ref_logp, _, _ = lm_logprobs(policy, tokens, attn, response, mask, t, entropy=False)
    else:
        ref = nnx.merge(statics.policy, state.frozen["reference"], state.frozen["policy_rest"])
        ref_logp, _, _ = lm_logprobs(ref, tokens, attn, response, mask, t, entropy=False)

    combined, raw, parts = combined_scores(state, episodes, host_scores_B, statics=statics)
    eos_B = has_eos(response, mask, statics.eos_ids)
    scores = shape_scores(combined, eos_B, config=config)

    shaped_coef = 0.0 if config.kl_in_loss else state.kl.coef
    rewards, kl = losses.kl_shaped_rewards(
        scores, logp, ref_logp, mask, kl_coef=shaped_coef, estimator=config.kl_estimator
    )
    if config.uses_critic:
        v = values(
            state.critic, state.frozen, tokens, attn, hidden, n, statics=statics, config=config
        )
        v = v * mask
        advantages, returns = losses.gae(rewards, v, mask, gamma=config.gamma, lam=config.lam)
    else:
        advantages = group_advantage(rewards, mask, config=config)
        v = returns = jnp.zeros_like(rewards)
    if config.whiten_advantages:
        advantages = losses.whiten(advantages, mask)
    out = dict(
        episodes,
        old_logp_BxN=logp,
        ref_logp_BxN=ref_logp,
        old_values_BxN=v,
        advantages_BxN=advantages,
        returns_BxN=returns,
        scores_B=scores,
        raw_scores_B=combined if raw is None else raw,
        reward_parts_B=parts,
        kl_BxN=kl,
        entropy_BxN=entropy,
        has_eos_B=eos_B,
        lengths_B=jnp.sum(mask, axis=-1),
    )
    if gold_fn is not None:
        out["gold_B"] = gold_fn(
            episodes["prompt_BxP"], episodes["prompt_mask_BxP"], response, mask
        ).astype(jnp.float32)
    features = dict(episodes.get("features_B", {}))
    for name, fn in feature_fns:
        features[name] = fn(
            episodes["prompt_BxP"], episodes["prompt_mask_BxP"], response, mask
        ).astype(jnp.float32)
    if features:
        out["features_B"] = features
    return out


def episode_metrics(state: PPOState, episodes, *, config: PPOConfig) -> dict:
    """The rollout's statistics, named as TRL users know them."""
    kl_seq = jnp.sum(episodes["kl_BxN"], axis=-1)
    # The KL part of the reward; zero when the KL penalty is in the loss instead.
    non_score = jnp.zeros_like(kl_seq) if config.kl_in_loss else -state.kl.coef * kl_seq
    scores = episodes["scores_B"]
    out = {
        "objective/kl": jnp.mean(kl_seq),
        "objective/entropy": jnp.mean(jnp.sum(episodes["entropy_BxN"], axis=-1)),
        "objective/non_score_reward": jnp.mean(non_score),
        "objective/rlhf_reward": jnp.mean(scores + non_score),
        "objective/scores": jnp.mean(scores),
        "objective/raw_scores": jnp.mean(episodes["raw_scores_B"]),
        "kl_coef": state.kl.coef,
        "response_length": jnp.mean(episodes["lengths_B"].astype(jnp.float32)),
        "no_eos_fraction": 1.0 - jnp.mean(episodes["has_eos_B"].astype(jnp.float32)),
        **{f"rewards/{k}/mean": jnp.mean(v) for k, v in episodes["reward_parts_B"].items()},
    }
    if "gold_B" in episodes:
        out["objective/gold"] = jnp.mean(episodes["gold_B"])
    for name, values in episodes.get("features_B", {}).items():
        out[f"features/{name}/mean"] = jnp.mean(values)
    return out
