"""PPO against a learned reward model, with a KL penalty to the reference policy and GAE.

One iteration (Ziegler et al. 2019; Stiennon et al. 2020; Ouyang et al. 2022), as three pure
functions — ``rollout`` → ``score`` → ``update`` — jitted separately (so each is timed) or as
one program (``PPOConfig.fuse_iteration``):

    rollout  sample N tokens per prompt with the policy at temperature T (fixed length: the
             response is cut after its first EOS and padded)
    score    re-score policy and reference log-probs (logits ÷ T, the sampling distribution),
             critic values, reward-model score at the last valid token (normalised with a gain
             and bias fitted on SFT samples; −1 for responses with no EOS), per-token rewards
             r_t = −β·KL_t (+ score at the last token), GAE (γ, λ) and whitened advantages
    update   epochs × shuffled minibatches × micro-batches of the clipped policy loss and the
             clipped value loss, with separate optimizers for policy and critic

The implementation details follow the PPO reproductions (lm-human-preferences; Huang et al.
2024, "The N+ Implementation Details of RLHF with PPO"); each is a ``PPOConfig`` field with the
literature default. RLOO and GRPO reuse the same rollout with K samples per prompt and
``group_advantages`` in place of the critic.

Letters: B episodes (prompts × K samples), P prompt length (left-padded), N response length,
L = P + N, V vocabulary, K samples per prompt.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, Literal

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rlhf_jax import losses, xla_options
from rlhf_jax.generation import SamplingConfig, sample
from rlhf_jax.models import positions_from_mask
from rlhf_jax.training.reward import score_sequences
from rlhf_jax.training.state import OptimizerConfig, make_optimizer


@dataclasses.dataclass(frozen=True, kw_only=True)
class PPOConfig:
    # Rollouts
    response_length: int = 32  # N: fixed sampling length (static shapes)
    temperature: float = 0.7  # sampling temperature, also used to re-score (logits ÷ T)
    missing_eos_penalty: float | None = -1.0  # score of a response with no EOS (None: keep)
    # Reward
    normalize_reward: bool = True  # gain/bias so RM scores of SFT samples have mean 0, std 1
    whiten_scores: bool = False  # whiten scores per batch without shifting the mean
    score_clip: float | None = None  # clip scores to ±score_clip after normalisation
    # KL to the reference (SFT) policy
    kl_coef: float = 0.05  # β, initial value when adaptive
    kl_target: float | None = None  # adaptive controller target (Ziegler et al.: 6); None fixed
    kl_horizon: float = 10000  # adaptive controller horizon in episodes
    kl_estimator: str = "k1"  # k1 | k2 | k3 | abs, per token
    kl_in_loss: bool = False  # add β·KL to the policy loss instead of the reward
    # Advantages
    advantage_estimator: Literal["gae", "rloo", "grpo"] = "gae"  # gae needs the critic
    value_model: Literal["separate", "shared"] = "separate"  # critic trunk: own, or the policy's
    samples_per_prompt: int = 1  # K (rloo/grpo need K >= 2)
    gamma: float = 1.0  # discount
    lam: float = 0.95  # GAE λ
    whiten_advantages: bool = True  # whiten advantages over the batch
    # Losses
    clip_eps: float = 0.2  # policy ratio clip
    clip_eps_high: float | None = None  # asymmetric upper clip (DAPO); None = clip_eps
    dual_clip: float | None = None  # dual-clip bound for negative advantages
    value_clip_eps: float | None = 0.2  # value clip around the rollout values (None: off)
    vf_coef: float = 0.1  # value loss weight
    entropy_coef: float = 0.0  # entropy bonus weight
    aggregation: str = "token_mean"  # token loss reduction (see losses.aggregate)
    # Update schedule
    ppo_epochs: int = 4  # passes over each batch of episodes
    num_minibatches: int = 2  # minibatches per pass (reshuffled every pass)
    grad_accum_steps: int = 1  # micro-batches per minibatch
    policy_optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    critic_optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    # Execution
    fuse_iteration: bool = False  # one XLA program per iteration (no per-phase timing)

    def __post_init__(self):
        if self.advantage_estimator not in ("gae", "rloo", "grpo"):
            raise ValueError(
                f"ppo.advantage_estimator={self.advantage_estimator!r}; "
                "expected 'gae', 'rloo' or 'grpo'"
            )
        if self.advantage_estimator != "gae" and self.samples_per_prompt < 2:
            raise ValueError(
                f"ppo.advantage_estimator={self.advantage_estimator!r} needs "
                f"ppo.samples_per_prompt >= 2; got {self.samples_per_prompt}"
            )
        if self.value_model not in ("separate", "shared"):
            raise ValueError(
                f"ppo.value_model={self.value_model!r}; expected 'separate' or 'shared'"
            )
        if self.temperature <= 0:
            raise ValueError(f"ppo.temperature must be > 0; got {self.temperature}")
        if self.kl_estimator not in losses.KL_ESTIMATORS:
            raise ValueError(
                f"ppo.kl_estimator={self.kl_estimator!r}; expected one of {losses.KL_ESTIMATORS}"
            )

    @property
    def uses_critic(self) -> bool:
        return self.advantage_estimator == "gae"


@flax.struct.dataclass
class PPOState:
    """Everything an iteration reads and writes; checkpointed whole."""

    iteration: jax.Array  # int32: completed iterations
    policy: Any  # nnx.State: policy Params
    policy_opt: Any  # optax state of the policy optimizer
    critic: Any  # nnx.State: critic Params (None without a critic)
    critic_opt: Any  # optax state of the critic optimizer (None without a critic)
    frozen: Any  # dict: reference and reward-model params, non-Param variables
    kl: losses.KLControllerState  # KL coefficient controller
    score_norm: jax.Array  # float32[2]: (gain, bias); score = gain · (r − bias)
    rng: jax.Array  # uint32[2] key data


@dataclasses.dataclass(frozen=True)
class Models:
    """The static half of the four models (graphdefs) and the token ids that matter."""

    policy: nnx.GraphDef
    critic: nnx.GraphDef | None
    reward: nnx.GraphDef
    eos_ids: tuple[int, ...]
    pad_id: int
    reward_pooling: str = "last"  # how the reward model turns per-token scores into one


def optimizers(config: PPOConfig):
    return make_optimizer(config.policy_optimizer), make_optimizer(config.critic_optimizer)


def _merge(graphdef, params, rest):
    return nnx.merge(graphdef, params, rest)


def _lm_logprobs_and_logits(model, tokens_BxL, attn_BxL, response_BxN, response_mask_BxN, t):
    """Log-probs of the response under ``model`` at temperature ``t``, the logits at its
    positions, and the final hidden states (a shared-trunk value head reads them)."""
    p = tokens_BxL.shape[1] - response_BxN.shape[1]
    h_BxLxD = model.hidden_states(
        tokens_BxL, positions_BxT=positions_from_mask(attn_BxL), attn_mask_BxT=attn_BxL
    )
    # The logits at position P − 1 + i predict response token i.
    logits_BxNxV = model.logits(h_BxLxD[:, p - 1 : -1])
    logp_BxN, _ = losses.sequence_logprobs(
        logits_BxNxV, response_BxN, response_mask_BxN, temperature=t
    )
    return logp_BxN, logits_BxNxV, h_BxLxD


def _values(critic_params, frozen, tokens_BxL, attn_BxL, h_BxLxD, n, *, models: Models, config):
    """V at the positions before each response token: from the separate critic's own forward,
    or (``value_model="shared"``) from the value head on the policy's hidden states."""
    critic = _merge(models.critic, critic_params, frozen["critic_rest"])
    if config.value_model == "shared":
        values_BxL = critic(h_BxLxD)
    else:
        values_BxL = critic(
            tokens_BxL, positions_BxT=positions_from_mask(attn_BxL), attn_mask_BxT=attn_BxL
        )
    return values_BxL[:, -n - 1 : -1]


def rollout(state: PPOState, prompt_BxP, prompt_mask_BxP, *, models: Models, config: PPOConfig):
    """Samples responses; returns the episode batch (tokens and masks), no scores yet."""
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.iteration)
    policy = _merge(models.policy, state.policy, state.frozen["policy_rest"])
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
            eos_ids=models.eos_ids,
            pad_id=models.pad_id,
        ),
    )
    return {
        "prompt_BxP": prompt_BxP,
        "prompt_mask_BxP": prompt_mask_BxP.astype(bool),
        "response_BxN": gen.tokens_BxN,
        "response_mask_BxN": gen.mask_BxN,
        "sample_logp_BxN": gen.logprobs_BxN,
    }


def _sequence(episodes):
    tokens = jnp.concatenate([episodes["prompt_BxP"], episodes["response_BxN"]], axis=1)
    attn = jnp.concatenate([episodes["prompt_mask_BxP"], episodes["response_mask_BxN"]], axis=1)
    return tokens, attn


def raw_scores(frozen, episodes, *, models: Models):
    """The reward model's score of each (prompt, response), before normalisation."""
    tokens, attn = _sequence(episodes)
    response_mask = jnp.concatenate(
        [jnp.zeros_like(episodes["prompt_mask_BxP"]), episodes["response_mask_BxN"]], axis=1
    )
    return score_sequences(
        models.reward,
        frozen["reward"],
        frozen["reward_rest"],
        tokens,
        positions_from_mask(attn),
        attn,
        response_mask,
        models.reward_pooling,
    )


def has_eos(response_BxN, mask_BxN, eos_ids) -> jax.Array:
    eos = jnp.asarray(eos_ids or (-1,), response_BxN.dtype)
    hit = jnp.any(response_BxN[..., None] == eos[None, None, :], axis=-1) & mask_BxN
    return jnp.any(hit, axis=-1)


def score(state: PPOState, episodes, *, models: Models, config: PPOConfig, gold_fn=None):
    """Re-scores the episodes: log-probs, reference log-probs, values, rewards, advantages."""
    tokens, attn = _sequence(episodes)
    response, mask = episodes["response_BxN"], episodes["response_mask_BxN"]
    n, t = response.shape[1], config.temperature
    policy = _merge(models.policy, state.policy, state.frozen["policy_rest"])
    reference = _merge(models.policy, state.frozen["reference"], state.frozen["policy_rest"])
    logp, logits, hidden = _lm_logprobs_and_logits(policy, tokens, attn, response, mask, t)
    ref_logp, _, _ = _lm_logprobs_and_logits(reference, tokens, attn, response, mask, t)
    entropy = losses.entropy_from_logits(logits, mask, temperature=t)

    raw = raw_scores(state.frozen, episodes, models=models)
    gain, bias = state.score_norm[0], state.score_norm[1]
    scores = gain * (raw - bias)
    eos_B = has_eos(response, mask, models.eos_ids)
    if config.missing_eos_penalty is not None:
        scores = jnp.where(eos_B, scores, config.missing_eos_penalty)
    if config.whiten_scores:
        scores = losses.whiten(scores, jnp.ones_like(scores, bool), shift_mean=False)
    if config.score_clip is not None:
        scores = jnp.clip(scores, -config.score_clip, config.score_clip)

    kl_coef = state.kl.coef
    shaped_coef = 0.0 if config.kl_in_loss else kl_coef
    rewards, kl = losses.kl_shaped_rewards(
        scores, logp, ref_logp, mask, kl_coef=shaped_coef, estimator=config.kl_estimator
    )
    if config.uses_critic:
        values = _values(
            state.critic, state.frozen, tokens, attn, hidden, n, models=models, config=config
        )
        values = values * mask
        advantages, returns = losses.gae(rewards, values, mask, gamma=config.gamma, lam=config.lam)
    else:
        k = config.samples_per_prompt
        seq_reward = jnp.sum(rewards, axis=-1).reshape(-1, k)
        baseline = "rloo" if config.advantage_estimator == "rloo" else "mean"
        seq_adv = losses.group_advantages(
            seq_reward, baseline=baseline, normalize_std=config.advantage_estimator == "grpo"
        ).reshape(-1)
        advantages = jnp.where(mask, seq_adv[:, None], 0.0)
        values = returns = jnp.zeros_like(rewards)
    if config.whiten_advantages:
        advantages = losses.whiten(advantages, mask)
    lengths = jnp.sum(mask, axis=-1)
    out = dict(
        episodes,
        old_logp_BxN=logp,
        ref_logp_BxN=ref_logp,
        old_values_BxN=values,
        advantages_BxN=advantages,
        returns_BxN=returns,
        scores_B=scores,
        raw_scores_B=raw,
        kl_BxN=kl,
        entropy_BxN=entropy,
        has_eos_B=eos_B,
        lengths_B=lengths,
    )
    if gold_fn is not None:
        out["gold_B"] = gold_fn(
            episodes["prompt_BxP"], episodes["prompt_mask_BxP"], response, mask
        ).astype(jnp.float32)
    return out


_TRAIN_KEYS = (
    "prompt_BxP",
    "prompt_mask_BxP",
    "response_BxN",
    "response_mask_BxN",
    "old_logp_BxN",
    "ref_logp_BxN",
    "old_values_BxN",
    "advantages_BxN",
    "returns_BxN",
)


def _denominator(mask_BxN, aggregation: str):
    if aggregation == "token_mean":
        return jnp.sum(mask_BxN, dtype=jnp.float32)
    return jnp.sum(jnp.any(mask_BxN, axis=-1), dtype=jnp.float32)


def _policy_loss(params, frozen, batch, denom, *, models: Models, config: PPOConfig):
    """Clipped surrogate (+ entropy bonus, + KL when it is in the loss); with a shared-trunk
    value head, ``params`` is (policy, head) and the value loss is added with ``vf_coef``."""
    if config.value_model == "shared" and config.uses_critic:
        params, head = params
    tokens, attn = _sequence(batch)
    response, mask = batch["response_BxN"], batch["response_mask_BxN"]
    policy = _merge(models.policy, params, frozen["policy_rest"])
    logp, logits, hidden = _lm_logprobs_and_logits(
        policy, tokens, attn, response, mask, config.temperature
    )
    norm = config.response_length
    loss, metrics = losses.ppo_policy_loss(
        logp,
        batch["old_logp_BxN"],
        batch["advantages_BxN"],
        mask,
        clip_eps=config.clip_eps,
        clip_eps_high=config.clip_eps_high,
        dual_clip=config.dual_clip,
        aggregation=config.aggregation,
        norm_constant=norm,
        normalizer=denom,
    )
    entropy = losses.entropy_from_logits(logits, mask, temperature=config.temperature)
    ent_loss, _, _ = losses.aggregate(
        entropy, mask, mode=config.aggregation, norm_constant=norm, normalizer=denom
    )
    total = loss - config.entropy_coef * ent_loss
    if config.kl_in_loss:
        kl = losses.kl_penalty(
            logp, batch["ref_logp_BxN"], estimator=config.kl_estimator, mask_BxT=mask
        )
        kl_loss, _, _ = losses.aggregate(
            kl, mask, mode=config.aggregation, norm_constant=norm, normalizer=denom
        )
        total = total + frozen_kl_coef(frozen) * kl_loss
    metrics = {**metrics, "pg_loss": loss, "entropy": ent_loss}
    if config.value_model == "shared" and config.uses_critic:
        values = _values(
            head, frozen, tokens, attn, hidden, mask.shape[1], models=models, config=config
        )
        vf, v_metrics = _value_terms(values, batch, denom, config=config)
        total = total + vf
        metrics.update({f"v_{k}": v for k, v in v_metrics.items()})
    return total, metrics


def frozen_kl_coef(frozen):
    return frozen["kl_coef"]


def _value_terms(values, batch, denom, *, config: PPOConfig):
    loss, metrics = losses.value_loss(
        values,
        batch["old_values_BxN"],
        batch["returns_BxN"],
        batch["response_mask_BxN"],
        clip_eps=config.value_clip_eps,
        aggregation=config.aggregation,
        norm_constant=config.response_length,
        normalizer=denom,
    )
    return config.vf_coef * loss, {**metrics, "vf_loss": loss}


def _value_loss(params, frozen, batch, denom, *, models: Models, config: PPOConfig):
    tokens, attn = _sequence(batch)
    n = batch["response_mask_BxN"].shape[1]
    values = _values(params, frozen, tokens, attn, None, n, models=models, config=config)
    return _value_terms(values, batch, denom, config=config)


def _accumulated_grads(loss_fn, params, frozen, minibatch, accum_steps):
    """Σ over micro-batches of grads of micro_loss (normalised by the minibatch denominator)."""

    def split(x):
        x = x.reshape((x.shape[0] // accum_steps, accum_steps, *x.shape[1:]))
        return jnp.swapaxes(x, 0, 1)

    micro = jax.tree.map(split, minibatch)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def body(acc, mb):
        (_, metrics), grads = grad_fn(params, frozen, mb)
        grads_acc, metrics_acc = acc
        weight = jnp.sum(mb["response_mask_BxN"], dtype=jnp.float32)
        return (
            jax.tree.map(jnp.add, grads_acc, grads),
            jax.tree.map(lambda a, m: a + weight * m, metrics_acc, metrics),
        ), weight

    first = jax.tree.map(lambda x: x[0], micro)
    metric_shapes = jax.eval_shape(lambda: loss_fn(params, frozen, first)[1])
    init = (
        jax.tree.map(jnp.zeros_like, params),
        jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), metric_shapes),
    )
    (grads, metric_sums), weights = jax.lax.scan(body, init, micro)
    metrics = jax.tree.map(lambda m: m / jnp.maximum(jnp.sum(weights), 1.0), metric_sums)
    return grads, metrics


def update(state: PPOState, episodes, *, models: Models, config: PPOConfig):
    """Epochs of shuffled minibatch updates; returns the new state and the update metrics."""
    policy_tx, critic_tx = optimizers(config)
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.iteration)
    key = jax.random.fold_in(key, 1)
    batch = {k: episodes[k] for k in _TRAIN_KEYS}
    b = batch["response_BxN"].shape[0]
    m = config.num_minibatches
    if b % (m * config.grad_accum_steps):
        raise ValueError(
            f"episodes per iteration ({b}) must divide by ppo.num_minibatches ({m}) × "
            f"ppo.grad_accum_steps ({config.grad_accum_steps})"
        )
    frozen = dict(state.frozen, kl_coef=state.kl.coef)
    policy_loss = functools.partial(_policy_loss, models=models, config=config)
    value_loss = functools.partial(_value_loss, models=models, config=config)

    shared = config.value_model == "shared" and config.uses_critic

    def minibatch_step(carry, indices):
        policy, policy_opt, critic, critic_opt = carry
        mb = jax.tree.map(lambda x: x[indices], batch)
        denom = _denominator(mb["response_mask_BxN"], config.aggregation)
        # One forward for both losses when the value head sits on the policy's trunk.
        params = (policy, critic) if shared else policy
        grads, p_metrics = _accumulated_grads(
            lambda p, f, x: policy_loss(p, f, x, denom), params, frozen, mb, config.grad_accum_steps
        )
        if shared:
            grads, v_grads = grads
            v_updates, critic_opt = critic_tx.update(v_grads, critic_opt, critic)
            critic = optax.apply_updates(critic, v_updates)
        updates, policy_opt = policy_tx.update(grads, policy_opt, policy)
        policy = optax.apply_updates(policy, updates)
        metrics = {f"policy/{k}": v for k, v in p_metrics.items() if not k.startswith("v_")}
        metrics.update({f"val/{k[2:]}": v for k, v in p_metrics.items() if k.startswith("v_")})
        metrics["policy/grad_norm"] = optax.tree.norm(grads)
        if config.uses_critic and not shared:
            v_grads, v_metrics = _accumulated_grads(
                lambda p, f, x: value_loss(p, f, x, denom),
                critic,
                frozen,
                mb,
                config.grad_accum_steps,
            )
            v_updates, critic_opt = critic_tx.update(v_grads, critic_opt, critic)
            critic = optax.apply_updates(critic, v_updates)
            metrics.update({f"val/{k}": v for k, v in v_metrics.items()})
        return (policy, policy_opt, critic, critic_opt), metrics

    def epoch(carry, epoch_index):
        perm = jax.random.permutation(jax.random.fold_in(key, epoch_index), b)
        return jax.lax.scan(minibatch_step, carry, perm.reshape(m, b // m))

    carry = (state.policy, state.policy_opt, state.critic, state.critic_opt)
    carry, metrics = jax.lax.scan(epoch, carry, jnp.arange(config.ppo_epochs))
    policy, policy_opt, critic, critic_opt = carry
    # metrics: (epochs, minibatches) per key; the first entry is the on-policy one (ratio 1).
    mean = {k: jnp.mean(v) for k, v in metrics.items()}
    summary = {
        "policy/approxkl": mean["policy/approx_kl"],
        "policy/clipfrac": mean["policy/clipfrac"],
        "policy/entropy": mean["policy/entropy"],
        "policy/grad_norm": mean["policy/grad_norm"],
        "policy/ratio_max": jnp.max(metrics["policy/ratio_max"]),
        "policy/first_ratio_mean": metrics["policy/ratio_mean"][0, 0],
        "policy/first_clipfrac": metrics["policy/clipfrac"][0, 0],
        "loss/policy": mean["policy/pg_loss"],
        "val/ratio": mean["policy/ratio_mean"],
    }
    if config.uses_critic:
        summary.update(
            {
                "loss/value": mean["val/vf_loss"],
                "val/clipfrac": mean["val/clipfrac"],
                "val/explained_variance": mean["val/explained_variance"],
                "val/mean": mean["val/value_mean"],
            }
        )
    mean_kl = jnp.mean(jnp.sum(episodes["kl_BxN"], axis=-1))
    new_kl = losses.adaptive_kl_update(state.kl, mean_kl, b)
    new_state = state.replace(
        iteration=state.iteration + 1,
        policy=policy,
        policy_opt=policy_opt,
        critic=critic,
        critic_opt=critic_opt,
        kl=new_kl,
    )
    return new_state, summary


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
    }
    if "gold_B" in episodes:
        out["objective/gold"] = jnp.mean(episodes["gold_B"])
    return out


def build_iteration(
    models: Models, config: PPOConfig, state_shardings, *, gold_fn: Callable | None = None
):
    """The jitted pieces of an iteration: (rollout_fn, score_fn, update_fn) or one fused fn."""
    r = functools.partial(rollout, models=models, config=config)
    s = functools.partial(score, models=models, config=config, gold_fn=gold_fn)
    u = functools.partial(update, models=models, config=config)

    def stats(state, episodes):
        return episode_metrics(state, episodes, config=config), {
            k: episodes[k]
            for k in ("scores_B", "raw_scores_B", "lengths_B", "has_eos_B", "gold_B")
            if k in episodes
        }

    def score_and_stats(state, episodes):
        episodes = s(state, episodes)
        return episodes, *stats(state, episodes)

    def fused(state, prompt_BxP, prompt_mask_BxP):
        episodes, ep_metrics, per_episode = score_and_stats(
            state, r(state, prompt_BxP, prompt_mask_BxP)
        )
        new_state, up_metrics = u(state, episodes)
        return new_state, {**ep_metrics, **up_metrics}, per_episode, episodes["response_BxN"]

    options = xla_options.compiler_options()
    return {
        "rollout": jax.jit(r, compiler_options=options),
        "score": jax.jit(score_and_stats, compiler_options=options),
        "update": jax.jit(
            u,
            in_shardings=(state_shardings, None),
            out_shardings=(state_shardings, None),
            donate_argnums=0,
            compiler_options=options,
        ),
        "fused": jax.jit(
            fused,
            in_shardings=(state_shardings, None, None),
            donate_argnums=0,
            compiler_options=options,
        ),
    }
