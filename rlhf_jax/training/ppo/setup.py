"""What a PPO run starts from: its reward sources (checked against the run config), and its
models and state on the mesh — the policy, its frozen reference, the reward model (optional)
and the critic (`rlhf_jax.placement`), both optimizers' states, the KL controller — and the
reward model's normalisation on SFT samples."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlhf_jax import checkpoint as ckpt_lib
from rlhf_jax import losses, models, rewards
from rlhf_jax import sharding as sharding_lib
from rlhf_jax.models import lora
from rlhf_jax.placement import (
    check_same_tokenizer,
    check_tokenizer,
    copy_tree,
    model_config,
    place_model,
    place_module,
)
from rlhf_jax.training.ppo import experience, sampling
from rlhf_jax.training.ppo.config import PPOState, Statics
from rlhf_jax.training.ppo.prompts import PromptSampler
from rlhf_jax.training.ppo.update import optimizers
from rlhf_jax.training.state import init_opt_state


def reward_sources(config, extra=()) -> tuple[rewards.WeightedFunction, ...]:
    """The configured reward functions and ``extra`` ones (callables a program passes in),
    checked against the rest of the config."""
    functions = (*rewards.resolve_sources(config.rewards), *extra)
    ppo = config.ppo
    if config.reward is None and not functions:
        raise ValueError("PPO needs a score: set reward (a reward model) or rewards.functions")
    if config.reward is None and ppo.uses_critic and ppo.value_model == "separate":
        if ppo.value_init == "reward":
            raise ValueError(
                "ppo.value_init='reward' starts the critic from the reward model, and there "
                "is none: set ppo.value_init='policy' or give reward"
            )
    texts = [f.name for f in functions if f.function.kind == "text"]
    if texts and ppo.fuse_iteration:
        raise ValueError(
            f"ppo.fuse_iteration runs the iteration as one program, but the text reward "
            f"functions {texts} run on the host between rollout and score"
        )
    return functions


def monitor_features(config, extra=()) -> tuple[rewards.RewardFunction, ...]:
    """The configured monitor features (``monitor_features``, resolved like reward functions,
    options from ``rewards.kwargs``) and ``extra`` ones, checked: unique identifier names, not
    "length" (it has its own monitors), no text ones in a fused iteration."""
    kwargs = config.rewards.kwargs
    found = (
        *(rewards.resolve(name, kwargs.get(name)) for name in config.monitor_features),
        *extra,
    )
    names = [f.name.rsplit(".", 1)[-1].rsplit(":", 1)[-1] for f in found]
    for name, f in zip(names, found, strict=True):
        if not name.isidentifier() or name == "length":
            raise ValueError(
                f"monitor feature {f.name!r}: its name {name!r} must be an identifier other "
                "than 'length' (length has its own monitors)"
            )
    if len(set(names)) != len(names):
        raise ValueError(f"monitor_features names a feature twice: {names}")
    texts = [f.name for f in found if f.kind == "text"]
    if texts and config.ppo.fuse_iteration:
        raise ValueError(
            f"ppo.fuse_iteration runs the iteration as one program, but the text monitor "
            f"features {texts} run on the host between rollout and score"
        )
    return tuple(dataclasses.replace(f, name=n) for f, n in zip(found, names, strict=True))


def _critic(config, policy, reward, mesh):
    """The critic on the mesh (None without one): a value head on the policy's trunk, or a
    scalar model whose trunk is a copy of the reward model's or the policy's. With a LoRA
    policy the critic takes LoRA too (its own adapters and head on a frozen copy of that
    trunk)."""
    ppo, seed = config.ppo, config.seed
    if ppo.shared_value_head:
        head = lambda: models.ScalarHead(policy.config, kind="value", rngs=nnx.Rngs(seed))
        return place_module(head, mesh, config=policy.config)
    if not ppo.uses_critic:
        return None
    source = reward if ppo.value_init == "reward" else policy
    adapters = config.policy.adapters
    critic = lambda: models.ScalarModel(source.config, kind="value", rngs=nnx.Rngs(seed))
    # The value head starts at zero (Huang et al. 2024); the trunk is the source's, copied
    # since the critic trains and the source does not.
    weights = source.params
    if adapters is not None and source is policy:  # the policy's base (its adapters are new)
        weights = policy.rest
    trunk = copy_tree(weights["trunk"])
    if adapters is None:
        return place_module(critic, mesh, given={"trunk": trunk}, config=source.config)
    return place_module(
        lambda: lora.add_adapters(critic(), adapters),
        mesh,
        given={"trunk": trunk},
        config=source.config,
        trainable=lora.trainable,
    )


def _or_none(model, field):
    return None if model is None else getattr(model, field)


def init_ppo_state(config, mesh, *, reward_functions=()):
    """Builds the PPOState on the mesh (before reward normalisation); returns it with its
    shardings, the ``Statics``, the policy's model config and the tokenizer.
    ``reward_functions`` (`rewards.WeightedFunction`) join the configured ones."""
    ppo = config.ppo
    functions = reward_sources(config, reward_functions)
    # The tokenizer is checked against the architecture before any weights are read.
    tokenizer = models.load_tokenizer(config.policy.tokenizer_path)
    check_tokenizer(
        tokenizer, model_config(config.policy), where="policy", field="policy.tokenizer"
    )
    if config.reward is not None:  # it scores the policy's token ids
        check_same_tokenizer(tokenizer, config.reward, where="the reward model")
        check_tokenizer(
            tokenizer, model_config(config.reward), where="reward", field="policy.tokenizer"
        )
    policy = place_model(config.policy, head="lm", mesh=mesh, seed=config.seed)
    reward = None
    if config.reward is not None:
        reward = place_model(config.reward, head="reward", mesh=mesh, seed=config.seed)
    critic = _critic(config, policy, reward, mesh)
    reference = None
    if config.reference is not None:
        if config.policy.adapters:
            raise ValueError(
                "reference: a LoRA policy's reference is its base (adapters off); leave "
                "reference unset, or merge the policy first"
            )
        ref = place_model(config.reference, head="lm", mesh=mesh, seed=config.seed)
        if ref.config != policy.config:
            raise ValueError(
                "reference: its architecture differs from the policy's; the KL penalty needs "
                "the same model"
            )
        reference = ref.params
    elif not config.policy.adapters:
        reference = copy_tree(policy.params)
    policy_tx, critic_tx = optimizers(ppo, config.iterations)
    policy_opt, policy_opt_sh = init_opt_state(policy_tx, policy.params, policy.shardings, mesh)
    critic_opt = critic_opt_sh = None
    if critic is not None:
        critic_opt, critic_opt_sh = init_opt_state(critic_tx, critic.params, critic.shardings, mesh)
    repl = sharding_lib.replicated(mesh)
    kl = losses.adaptive_kl_init(
        init_coef=ppo.initial_kl_coef, target=ppo.kl_target, horizon=ppo.kl_horizon
    )
    state = PPOState(
        step=jnp.zeros((), jnp.int32),
        policy=policy.params,
        policy_opt=policy_opt,
        critic=_or_none(critic, "params"),
        critic_opt=critic_opt,
        frozen={
            # Under LoRA the reference is the policy with its adapters off: no copy.
            "reference": reference,
            "policy_rest": policy.rest,
            "reward": _or_none(reward, "params"),
            "reward_rest": _or_none(reward, "rest"),
            "critic_rest": _or_none(critic, "rest"),
        },
        kl=kl,
        score_norm=jnp.array([1.0, 0.0], jnp.float32),
        rng=jax.random.key_data(jax.random.key(config.seed)),
        nonfinite_count=jnp.zeros((), jnp.int32),
        first_nonfinite_step=jnp.full((), -1, jnp.int32),
    )
    shardings = PPOState(
        step=repl,
        policy=policy.shardings,
        policy_opt=policy_opt_sh,
        critic=_or_none(critic, "shardings"),
        critic_opt=critic_opt_sh,
        frozen={
            "reference": None if config.policy.adapters else policy.shardings,
            "policy_rest": policy.rest_shardings,
            "reward": _or_none(reward, "shardings"),
            "reward_rest": _or_none(reward, "rest_shardings"),
            "critic_rest": _or_none(critic, "rest_shardings"),
        },
        kl=jax.tree.map(lambda _: repl, kl),
        score_norm=repl,
        rng=repl,
        nonfinite_count=repl,
        first_nonfinite_step=repl,
    )
    state = jax.device_put(state, shardings)
    pooling = "last"
    if config.reward is not None and config.reward.origin == "artifact":
        pooling = ckpt_lib.read_artifact_meta(config.reward.artifact).get("pooling") or "last"
    statics = Statics(
        policy=policy.graphdef,
        critic=_or_none(critic, "graphdef"),
        reward=_or_none(reward, "graphdef"),
        eos_ids=tuple(policy.config.eos_token_ids) or (tokenizer.eos_token_id,),
        pad_id=int(tokenizer.pad_token_id),
        reward_pooling=pooling,
        reward_weight=config.rewards.model_weight,
        token_rewards=tuple(f for f in functions if f.function.kind == "tokens"),
    )
    return state, shardings, statics, policy.config, tokenizer


def fit_reward_normalisation(state, fns, sampler: PromptSampler, num_prompts: int, mesh, statics):
    """Gain and bias so the reward model's scores of SFT samples have mean 0 and std 1."""

    @jax.jit
    def raw(state, episodes):
        return experience.raw_scores(state.frozen, episodes, statics=statics)

    scores = []
    rounds = max(1, math.ceil(num_prompts / sampler.batch_size))
    probe = PromptSampler(
        sampler.tokens, sampler.mask, batch_size=sampler.batch_size, seed=sampler.seed + 9973
    )
    for _ in range(rounds):
        tokens, mask, _ = probe.next()
        batch = sharding_lib.shard_batch({"t": tokens, "m": mask}, mesh)
        episodes = fns["rollout"](state, batch["t"], batch["m"])
        scores.append(sampling.to_host(raw(state, episodes)))
    scores = np.concatenate(scores)
    mean, std = float(scores.mean()), float(scores.std())
    gain = 1.0 / std if std > 1e-6 else 1.0
    score_norm = jax.device_put(jnp.array([gain, mean], jnp.float32), state.score_norm.sharding)
    return state.replace(score_norm=score_norm), {
        "reward_norm/raw_mean": mean,
        "reward_norm/raw_std": std,
    }
