"""A PPO iteration's update: epochs × shuffled minibatches × micro-batches of the clipped policy
loss and the clipped value loss, with separate optimizers for the policy and the critic.

Gradients go through the shared accumulator (`rlhf_jax.training.grads.accumulate`: each
micro-batch's loss is its own mean under ``losses.aggregate``, weighted by that mean's
denominator), and the iteration's update is refused whole if any minibatch had a non-finite
loss, gradient or update (`grads.keep_if_finite`), exactly as the offline phases refuse a
step.

Letters: B episodes, P prompt length, N response length, M minibatches.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rlhf_jax import losses
from rlhf_jax.training import grads as grads_lib
from rlhf_jax.training.optimizer import make_optimizer
from rlhf_jax.training.ppo import experience
from rlhf_jax.training.ppo.config import PPOConfig, PPOState, Statics

TRAIN_KEYS = (
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


def optimizers(config: PPOConfig, iterations: int):
    """(policy, critic) optax transformations, their schedules over the run's updates."""
    steps = config.optimizer_steps(iterations)
    return (
        make_optimizer(config.policy_optimizer, steps),
        make_optimizer(config.critic_optimizer, steps),
    )


def _aggregate(x_BxN, mask, config: PPOConfig):
    loss, _, _ = losses.aggregate(
        x_BxN, mask, mode=config.aggregation, norm_constant=config.response_length
    )
    return loss


def value_terms(values_BxN, batch, *, config: PPOConfig):
    """(vf_coef · value loss, metrics) of one micro-batch."""
    loss, metrics = losses.value_loss(
        values_BxN,
        batch["old_values_BxN"],
        batch["returns_BxN"],
        batch["response_mask_BxN"],
        clip_eps=config.value_clip_eps,
        aggregation=config.aggregation,
        norm_constant=config.response_length,
    )
    return config.vf_coef * loss, {**metrics, "vf_loss": loss}


def surrogate(logp_BxN, batch, mask_BxN, *, config: PPOConfig):
    """The policy objective of ``config.policy_loss`` (PPO's clipped surrogate, GSPO, GSPO-token
    or CISPO), with truncated importance weights of the sampler when ``config.tis_cap``."""
    weights = None
    if config.tis_cap is not None:
        weights = losses.truncated_importance_weights(
            batch["old_logp_BxN"], batch["sample_logp_BxN"], mask_BxN, cap=config.tis_cap
        )
    args = (logp_BxN, batch["old_logp_BxN"], batch["advantages_BxN"], mask_BxN)
    clip = dict(clip_eps=config.clip_eps, clip_eps_high=config.clip_eps_high)
    reduce = dict(aggregation=config.aggregation, norm_constant=config.response_length)
    if config.policy_loss == "gspo":
        return losses.gspo_policy_loss(*args, **clip)
    if config.policy_loss == "gspo_token":
        return losses.gspo_policy_loss(
            *args, **clip, **reduce, token_level=True, token_weights_BxT=weights
        )
    if config.policy_loss == "cispo":
        return losses.cispo_policy_loss(*args, **clip, **reduce, token_weights_BxT=weights)
    kwargs = {} if weights is None else {"token_weights_BxT": weights}
    return losses.ppo_policy_loss(*args, **clip, **reduce, dual_clip=config.dual_clip, **kwargs)


def policy_loss(params, frozen, batch, *, statics: Statics, config: PPOConfig):
    """The policy objective (+ entropy bonus, + KL when it is in the loss) of one micro-batch;
    with a shared-trunk value head, ``params`` is (policy, head) and the value loss is added.
    Returns ``(loss, (weight, metrics))``, the weight being the aggregation's denominator."""
    if config.shared_value_head:
        params, head = params
    tokens, attn = experience.sequence(batch)
    response, mask = batch["response_BxN"], batch["response_mask_BxN"]
    policy = nnx.merge(statics.policy, params, frozen["policy_rest"])
    logp, entropy_BxN, hidden = experience.lm_logprobs(
        policy, tokens, attn, response, mask, config.temperature, entropy=True
    )
    loss, metrics = surrogate(logp, batch, mask, config=config)
    entropy = _aggregate(entropy_BxN, mask, config)
    total = loss - config.entropy_coef * entropy
    if config.kl_in_loss:
        kl = losses.kl_penalty(
            logp, batch["ref_logp_BxN"], estimator=config.kl_estimator, mask_BxT=mask
        )
        total = total + frozen["kl_coef"] * _aggregate(kl, mask, config)
    weight = metrics["loss_denominator"]
    metrics = {**metrics, "pg_loss": loss, "entropy": entropy}
    if config.shared_value_head:
        v = experience.values(
            head, frozen, tokens, attn, hidden, mask.shape[1], statics=statics, config=config
        )
        vf, v_metrics = value_terms(v, batch, config=config)
        total = total + vf
        metrics.update({f"v_{k}": v for k, v in v_metrics.items()})
    return total, (weight, metrics)


def value_loss(params, frozen, batch, *, statics: Statics, config: PPOConfig):
    """The separate critic's loss of one micro-batch: ``(loss, (weight, metrics))``."""
    tokens, attn = experience.sequence(batch)
    n = batch["response_mask_BxN"].shape[1]
    v = experience.values(params, frozen, tokens, attn, None, n, statics=statics, config=config)
    loss, metrics = value_terms(v, batch, config=config)
    return loss, (metrics["loss_denominator"], metrics)


def _apply(tx, grads, opt_state, params):
    """(params, opt_state, whether the gradient and the updated parameters are finite) after one
    optimizer step (a finite gradient can still give a non-finite update: Adam at ε = 0)."""
    updates, opt_state = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    return new_params, opt_state, grads_lib.all_finite(grads, new_params)


def update(state: PPOState, episodes, *, statics: Statics, config: PPOConfig, iterations: int):
    """Epochs of shuffled minibatch updates; returns the new state and the update metrics."""
    policy_tx, critic_tx = optimizers(config, iterations)
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    key = jax.random.fold_in(key, 1)
    keys = (*TRAIN_KEYS, "sample_logp_BxN") if config.tis_cap is not None else TRAIN_KEYS
    batch = {k: episodes[k] for k in keys}
    b = batch["response_BxN"].shape[0]
    m, accum = config.num_minibatches, config.grad_accum_steps
    if b % (m * accum):
        raise ValueError(
            f"episodes per iteration ({b}) must divide by ppo.num_minibatches ({m}) × "
            f"ppo.grad_accum_steps ({accum})"
        )
    frozen = dict(state.frozen, kl_coef=state.kl.coef)
    p_loss = functools.partial(policy_loss, statics=statics, config=config)
    v_loss = functools.partial(value_loss, statics=statics, config=config)
    shared = config.shared_value_head

    def minibatch_step(carry, indices):
        policy, policy_opt, critic, critic_opt, ok = carry
        mb = jax.tree.map(lambda x: x[indices], batch)
        # One forward for both losses when the value head sits on the policy's trunk.
        params = (policy, critic) if shared else policy
        loss, grads, p_metrics, _ = grads_lib.accumulate(
            lambda p, x, _: p_loss(p, frozen, x), params, mb, accum
        )
        ok = ok & jnp.isfinite(loss)
        if shared:
            grads, v_grads = grads
            critic, critic_opt, finite = _apply(critic_tx, v_grads, critic_opt, critic)
            ok = ok & finite
        policy, policy_opt, finite = _apply(policy_tx, grads, policy_opt, policy)
        ok = ok & finite
        metrics = {f"policy/{k}": v for k, v in p_metrics.items() if not k.startswith("v_")}
        metrics.update({f"val/{k[2:]}": v for k, v in p_metrics.items() if k.startswith("v_")})
        metrics["policy/grad_norm"] = optax.tree.norm(grads)
        if config.uses_critic and not shared:
            v_loss_value, v_grads, v_metrics, _ = grads_lib.accumulate(
                lambda p, x, _: v_loss(p, frozen, x), critic, mb, accum
            )
            critic, critic_opt, finite = _apply(critic_tx, v_grads, critic_opt, critic)
            ok = ok & finite & jnp.isfinite(v_loss_value)
            metrics.update({f"val/{k}": v for k, v in v_metrics.items()})
        return (policy, policy_opt, critic, critic_opt, ok), metrics

    def epoch(carry, epoch_index):
        perm = jax.random.permutation(jax.random.fold_in(key, epoch_index), b)
        return jax.lax.scan(minibatch_step, carry, perm.reshape(m, b // m))

    old = (state.policy, state.policy_opt, state.critic, state.critic_opt)
    carry, metrics = jax.lax.scan(epoch, (*old, jnp.bool_(True)), jnp.arange(config.ppo_epochs))
    *new, finite = carry
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
    # A refused iteration changes nothing but the counters: parameters, optimizer states and
    # the KL controller keep their values from before it.
    policy, policy_opt, critic, critic_opt = grads_lib.keep_if_finite(finite, tuple(new), old)
    count, first = grads_lib.count_nonfinite(
        finite, state.step, state.nonfinite_count, state.first_nonfinite_step
    )
    new_state = state.replace(
        step=state.step + 1,
        policy=policy,
        policy_opt=policy_opt,
        critic=critic,
        critic_opt=critic_opt,
        kl=grads_lib.keep_if_finite(finite, new_kl, state.kl),
        nonfinite_count=count,
        first_nonfinite_step=first,
    )
    summary["nonfinite_updates"] = count.astype(jnp.float32)
    return new_state, summary
