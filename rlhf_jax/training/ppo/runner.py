"""Running PPO end to end: models from the earlier phases, prompts, the shared loop.

    result = run_ppo(PPORunConfig(...), gold_fn=..., monitor=...)

The four models share one mesh (`rlhf_jax.placement`): the policy (trained), the reference
(frozen copy of the initial policy), the reward model (frozen) and the critic (trained;
initialised from the reward model's trunk with a zero value head, or from the policy's trunk, or
a value head alone on the policy's trunk). Each iteration is three compiled programs (rollout,
score, update — timed separately) or one (``ppo.fuse_iteration``), driven by the loop every
phase shares (`loop.Run`: resume, SIGTERM, checkpoints, the non-finite guard, metrics). A
checkpoint holds the whole ``PPOState`` (policy, critic, both optimizers, KL controller, reward
normalisation, rng) and the prompt position, so a resumed run continues exactly.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlhf_jax import checkpoint as ckpt_lib
from rlhf_jax import data as data_lib
from rlhf_jax import losses, models
from rlhf_jax import sharding as sharding_lib
from rlhf_jax.logging import to_floats
from rlhf_jax.placement import ModelSource, copy_tree, place_model, place_module
from rlhf_jax.training.loop import Run
from rlhf_jax.training.optimizer import make_schedule
from rlhf_jax.training.ppo import experience
from rlhf_jax.training.ppo.config import PPOConfig, PPOState, Statics
from rlhf_jax.training.ppo.programs import build_iteration
from rlhf_jax.training.ppo.update import optimizers
from rlhf_jax.training.state import init_opt_state


@dataclasses.dataclass(frozen=True, kw_only=True)
class PPORunConfig:
    run_dir: str  # checkpoints, logs and the final policy artifact
    policy: ModelSource  # the SFT policy (also the frozen reference)
    reward: ModelSource  # the trained reward model
    prompts: str  # a .json/.jsonl/.parquet file (or hub dataset) with a "prompt" column
    prompt_split: str = "train"  # its split
    prompt_length: int = 32  # P: prompts are left-padded to this; longer ones raise
    prompts_per_iteration: int = 64  # distinct prompts per iteration (× samples_per_prompt)
    iterations: int = 100  # PPO iterations (the optimizers' schedules span all of them)
    ppo: PPOConfig = dataclasses.field(default_factory=PPOConfig)
    mesh: sharding_lib.MeshConfig = dataclasses.field(default_factory=sharding_lib.MeshConfig)
    checkpoint: ckpt_lib.CheckpointConfig = dataclasses.field(
        default_factory=ckpt_lib.CheckpointConfig
    )
    log_every: int = 1  # iterations between metric writes
    seed: int = 0  # sampling and shuffling
    skip_nonfinite: bool = False  # skip (and count) non-finite updates instead of stopping
    console: bool = True  # progress bar
    tensorboard: bool = True  # TensorBoard events


class PromptSampler:
    """Seeded, resumable prompt batches: an endless stream of per-epoch permutations.

    Batch i is positions [i·B, (i+1)·B) of perm(seed, 0) ‖ perm(seed, 1) ‖ …; the state is one
    integer. Each host takes its contiguous slice of every global batch.
    """

    def __init__(self, tokens_NxP, mask_NxP, *, batch_size: int, seed: int, repeat: int = 1):
        if batch_size % jax.process_count():
            raise ValueError(
                f"prompts_per_iteration={batch_size} must divide by the {jax.process_count()} "
                "processes"
            )
        self.tokens, self.mask = tokens_NxP, mask_NxP
        self.batch_size, self.seed, self.repeat = batch_size, seed, repeat
        self.position = 0

    def _indices(self, start: int, count: int) -> np.ndarray:
        n = len(self.tokens)
        out = []
        while count > 0:
            epoch, offset = divmod(start, n)
            perm = np.random.default_rng([self.seed, epoch]).permutation(n)
            take = perm[offset : offset + count]
            out.append(take)
            start += len(take)
            count -= len(take)
        return np.concatenate(out)

    def next(self) -> tuple[np.ndarray, np.ndarray]:
        idx = self._indices(self.position, self.batch_size)
        self.position += self.batch_size
        per_host = self.batch_size // jax.process_count()
        idx = idx[jax.process_index() * per_host : (jax.process_index() + 1) * per_host]
        # K samples per prompt sit next to each other (group baselines reshape to (B/K, K)).
        idx = np.repeat(idx, self.repeat)
        return self.tokens[idx], self.mask[idx]

    def state(self) -> dict:
        return {"position": self.position, "seed": self.seed, "num_prompts": len(self.tokens)}

    def restore(self, state: dict) -> None:
        if state["seed"] != self.seed or state["num_prompts"] != len(self.tokens):
            raise ckpt_lib.CheckpointError(
                f"prompt position saved for seed {state['seed']} over {state['num_prompts']} "
                f"prompts; now seed {self.seed} over {len(self.tokens)}"
            )
        self.position = int(state["position"])


def _critic(config: PPORunConfig, policy, reward, mesh):
    """The critic on the mesh (None without one): a value head on the policy's trunk, or a
    scalar model whose trunk is a copy of the reward model's or the policy's."""
    ppo, seed = config.ppo, config.seed
    if ppo.shared_value_head:
        head = lambda: models.ScalarHead(policy.config, kind="value", rngs=nnx.Rngs(seed))
        return place_module(head, mesh, config=policy.config)
    if not ppo.uses_critic:
        return None
    source = reward if ppo.value_init == "reward" else policy
    critic = lambda: models.ScalarModel(source.config, kind="value", rngs=nnx.Rngs(seed))
    # The value head starts at zero (Huang et al. 2024); the trunk is the source's, copied
    # since the critic trains and the source does not.
    trunk = copy_tree(source.params["trunk"])
    return place_module(critic, mesh, given={"trunk": trunk}, config=source.config)


def init_ppo_state(config: PPORunConfig, mesh):
    """Builds the PPOState on the mesh (before reward normalisation); returns it with its
    shardings, the ``Statics``, the policy's model config and the tokenizer."""
    ppo = config.ppo
    policy = place_model(config.policy, head="lm", mesh=mesh, seed=config.seed)
    reward = place_model(config.reward, head="reward", mesh=mesh, seed=config.seed)
    critic = _critic(config, policy, reward, mesh)
    tokenizer = models.load_tokenizer(config.policy.tokenizer_path)
    policy_tx, critic_tx = optimizers(ppo, config.iterations)
    policy_opt, policy_opt_sh = init_opt_state(policy_tx, policy.params, policy.shardings, mesh)
    critic_opt = critic_opt_sh = None
    if critic is not None:
        critic_opt, critic_opt_sh = init_opt_state(critic_tx, critic.params, critic.shardings, mesh)
    repl = sharding_lib.replicated(mesh)
    kl = losses.adaptive_kl_init(
        init_coef=ppo.kl_coef, target=ppo.kl_target, horizon=ppo.kl_horizon
    )
    state = PPOState(
        step=jnp.zeros((), jnp.int32),
        policy=policy.params,
        policy_opt=policy_opt,
        critic=None if critic is None else critic.params,
        critic_opt=critic_opt,
        frozen={
            "reference": copy_tree(policy.params),
            "policy_rest": policy.rest,
            "reward": reward.params,
            "reward_rest": reward.rest,
            "critic_rest": None if critic is None else critic.rest,
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
        critic=None if critic is None else critic.shardings,
        critic_opt=critic_opt_sh,
        frozen={
            "reference": policy.shardings,
            "policy_rest": policy.rest_shardings,
            "reward": reward.shardings,
            "reward_rest": reward.rest_shardings,
            "critic_rest": None if critic is None else critic.rest_shardings,
        },
        kl=jax.tree.map(lambda _: repl, kl),
        score_norm=repl,
        rng=repl,
        nonfinite_count=repl,
        first_nonfinite_step=repl,
    )
    state = jax.device_put(state, shardings)
    pooling = "last"
    if config.reward.origin == "artifact":
        pooling = ckpt_lib.read_artifact_meta(config.reward.artifact).get("pooling") or "last"
    statics = Statics(
        policy=policy.graphdef,
        critic=None if critic is None else critic.graphdef,
        reward=reward.graphdef,
        eos_ids=tuple(policy.config.eos_token_ids) or (tokenizer.eos_token_id,),
        pad_id=int(tokenizer.pad_token_id),
        reward_pooling=pooling,
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
        tokens, mask = probe.next()
        batch = sharding_lib.shard_batch({"t": tokens, "m": mask}, mesh)
        episodes = fns["rollout"](state, batch["t"], batch["m"])
        scores.append(np.asarray(jax.device_get(raw(state, episodes))))
    scores = np.concatenate(scores)
    mean, std = float(scores.mean()), float(scores.std())
    gain = 1.0 / std if std > 1e-6 else 1.0
    score_norm = jax.device_put(jnp.array([gain, mean], jnp.float32), state.score_norm.sharding)
    return state.replace(score_norm=score_norm), {
        "reward_norm/raw_mean": mean,
        "reward_norm/raw_std": std,
    }


def _iteration_fn(fns, sampler: PromptSampler, mesh, config: PPORunConfig):
    """The loop's step adapter: one iteration on the next prompts, its metrics as floats
    (with each program's time when the iteration runs as three)."""
    schedule = make_schedule(
        config.ppo.policy_optimizer, config.ppo.optimizer_steps(config.iterations)
    )
    updates_per_iteration = config.ppo.ppo_epochs * config.ppo.num_minibatches
    episodes_per_iteration = config.prompts_per_iteration * config.ppo.samples_per_prompt

    def step(state):
        t0 = time.perf_counter()
        p_tokens, p_mask = sampler.next()
        batch = sharding_lib.shard_batch({"t": p_tokens, "m": p_mask}, mesh)
        if config.ppo.fuse_iteration:
            state, metrics, per_episode, _ = fns["fused"](state, batch["t"], batch["m"])
            jax.block_until_ready(state.step)
            times = {"time/iteration": time.perf_counter() - t0}
        else:
            episodes = jax.block_until_ready(fns["rollout"](state, batch["t"], batch["m"]))
            t1 = time.perf_counter()
            episodes, ep_metrics, per_episode = jax.block_until_ready(fns["score"](state, episodes))
            t2 = time.perf_counter()
            state, up_metrics = fns["update"](state, episodes)
            jax.block_until_ready(state.step)
            t3 = time.perf_counter()
            metrics = {**ep_metrics, **up_metrics}
            times = {
                "time/rollout": t1 - t0,
                "time/scoring": t2 - t1,
                "time/update": t3 - t2,
                "time/iteration": t3 - t0,
            }
        iteration = int(jax.device_get(state.step))
        row = {
            **to_floats(metrics),
            **times,
            "episodes_per_second": episodes_per_iteration / times["time/iteration"],
            "lr": float(schedule((iteration - 1) * updates_per_iteration)),
            "iteration": iteration,
        }
        return state, row, per_episode

    return step


def run_ppo(
    config: PPORunConfig,
    *,
    gold_fn: Callable | None = None,
    monitor=None,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Runs (or resumes) PPO; returns the per-iteration history and the final state.

    ``gold_fn(prompt_BxP, prompt_mask_BxP, response_BxN, response_mask_BxN) -> gold_B`` (jittable)
    adds ``objective/gold`` where a gold reward exists; ``monitor`` (an
    ``rlhf_jax.evaluation.HackingMonitor``) sees every iteration's per-episode statistics.
    """
    mesh = sharding_lib.make_mesh(config.mesh)
    state, shardings, statics, policy_cfg, tokenizer = init_ppo_state(config, mesh)
    prompts = data_lib.load_prompts(config.prompts, split=config.prompt_split)
    tokens, mask = models.encode_prompts(tokenizer, prompts, max_length=config.prompt_length)
    sampler = PromptSampler(
        tokens,
        mask,
        batch_size=config.prompts_per_iteration,
        seed=config.seed,
        repeat=config.ppo.samples_per_prompt,
    )
    fns = build_iteration(
        statics, config.ppo, shardings, iterations=config.iterations, gold_fn=gold_fn
    )
    fingerprint = {
        "phase": "ppo",
        "policy": policy_cfg.to_dict(),
        "ppo": dataclasses.asdict(config.ppo),
        "prompts_per_iteration": config.prompts_per_iteration,
        "prompt_length": config.prompt_length,
        "seed": config.seed,
    }
    history, norm_info = [], {}
    with Run(
        config.run_dir,
        description="ppo",
        total_steps=config.iterations,
        fingerprint=fingerprint,
        checkpoint=config.checkpoint,
        console=config.console,
        tensorboard=config.tensorboard,
        show=("objective/scores", "objective/kl", "objective/gold"),
        unit="iteration",
    ) as run:
        state, resumed = run.resume(state, shardings, sampler.restore)
        if not resumed and config.ppo.normalize_reward:
            state, norm_info = fit_reward_normalisation(
                state, fns, sampler, config.ppo.reward_norm_prompts, mesh, statics
            )
            mean, std = norm_info["reward_norm/raw_mean"], norm_info["reward_norm/raw_std"]
            run.print(f"reward normalisation on SFT samples: mean {mean:.4g}, std {std:.4g}")
        iteration = _iteration_fn(fns, sampler, mesh, config)

        def step(state):
            state, row, per_episode = iteration(state)
            if monitor is not None:
                stats = {k: np.asarray(v) for k, v in jax.device_get(per_episode).items()}
                for warning in monitor.update(row["iteration"], _monitor_stats(row, stats)):
                    run.print(f"warning: {warning}")
            history.append(row)
            return state, row

        state, status = run.loop(
            state,
            step,
            sampler.state,
            log_every=config.log_every,
            skip_nonfinite=config.skip_nonfinite,
            stop_after=stop_after,
        )
        iterations_done = int(jax.device_get(state.step))
        if status == "finished":
            meta = {"phase": "ppo", "head": "lm", "model": policy_cfg.to_dict()}
            run.save_artifact(state.policy, {**meta, "iterations": iterations_done})
    return {
        "status": status,
        "iteration": iterations_done,
        "history": history,
        "state": state,
        "statics": statics,
        "tokenizer": tokenizer,
        "reward_norm": norm_info,
        "fns": fns,
    }


def _monitor_stats(row: dict, per_episode: dict) -> dict:
    stats = {
        "proxy_scores_B": per_episode["scores_B"],
        "lengths_B": per_episode["lengths_B"],
        "kl": row["objective/kl"],
        "entropy": row["objective/entropy"],
    }
    if "gold_B" in per_episode:
        stats["gold_scores_B"] = per_episode["gold_B"]
    return stats
