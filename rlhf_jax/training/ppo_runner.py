"""Running PPO end to end: models from the earlier phases, prompts, the loop, checkpoints.

    result = run_ppo(PPORunConfig(...), gold_fn=..., monitor=...)

The four models share one mesh: the policy (trained), the reference (frozen copy of the initial
policy), the reward model (frozen) and the critic (trained; initialised from the reward model's
trunk with a zero value head, or from the policy's trunk). Python only loops over iterations;
each iteration is three compiled programs (rollout, score, update — timed separately) or one
(``ppo.fuse_iteration``). A PPO checkpoint holds the whole ``PPOState`` (policy, critic, both
optimizers, KL controller, reward normalisation, rng) and the prompt position, so a resumed run
continues exactly.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
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
from rlhf_jax.logging import MetricWriter, to_floats
from rlhf_jax.training import phase as phase_lib
from rlhf_jax.training import ppo as ppo_lib
from rlhf_jax.training import state as state_lib
from rlhf_jax.training.loop import interrupt_flag


@dataclasses.dataclass(frozen=True, kw_only=True)
class PPORunConfig:
    run_dir: str  # checkpoints, logs and the final policy artifact
    policy: phase_lib.ModelSource  # the SFT policy (also the frozen reference)
    reward: phase_lib.ModelSource  # the trained reward model
    prompts: str  # a .json/.jsonl/.parquet file (or hub dataset) with a "prompt" column
    prompt_split: str = "train"  # its split
    prompt_length: int = 32  # P: prompts are left-padded to this; longer ones raise
    prompts_per_iteration: int = 64  # distinct prompts per iteration (× samples_per_prompt)
    iterations: int = 100  # PPO iterations
    value_init: str = "reward"  # critic trunk from the "reward" model or the "policy"
    reward_norm_prompts: int = 256  # SFT samples used to fit the reward gain/bias
    ppo: ppo_lib.PPOConfig = dataclasses.field(default_factory=ppo_lib.PPOConfig)
    mesh: sharding_lib.MeshConfig = dataclasses.field(default_factory=sharding_lib.MeshConfig)
    checkpoint: ckpt_lib.CheckpointConfig = dataclasses.field(
        default_factory=ckpt_lib.CheckpointConfig
    )
    log_every: int = 1  # iterations between metric writes
    seed: int = 0  # sampling and shuffling
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


def load_prompts(path: str, *, split: str = "train") -> list:
    rows = data_lib.load_rows(path, split=split)
    if "prompt" not in rows.column_names:
        raise ValueError(f"{path}: PPO prompts need a 'prompt' column; found {rows.column_names}")
    prompts = rows["prompt"]
    empty = [i for i, p in enumerate(prompts) if not p]
    if empty:
        raise ValueError(f"{path}: rows {empty[:5]} have an empty prompt")
    return prompts


def _load(kind, source: phase_lib.ModelSource, mesh, seed):
    # Imported here: policy_io builds on the training modules.
    from rlhf_jax.policy_io import load_model

    loaded = load_model(source, kind=kind, mesh=mesh, seed=seed)
    return loaded.config, loaded.graphdef, loaded.params, loaded.rest


def _copy(tree):
    return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


def init_ppo_state(config: PPORunConfig, mesh):
    """Builds the PPOState on the mesh (before reward normalisation); returns it with its
    shardings, the static ``Models`` and the policy's model config."""
    ppo = config.ppo
    policy_cfg, policy_g, policy_params, policy_rest = _load(
        "sft", config.policy, mesh, config.seed
    )
    reward_cfg, reward_g, reward_params, reward_rest = _load(
        "reward", config.reward, mesh, config.seed
    )
    tokenizer = models.load_tokenizer(config.policy.tokenizer or config.policy.hf_path)
    eos_ids = tuple(policy_cfg.eos_token_ids) or (tokenizer.eos_token_id,)
    critic_g = critic = critic_rest = None
    if ppo.uses_critic and ppo.value_model == "shared":
        # A value head on the policy's own trunk: its only parameters are the head's.
        critic_fn = lambda: models.ScalarHead(policy_cfg, kind="value", rngs=nnx.Rngs(config.seed))
        critic_g, abstract_critic, abstract_rest = state_lib.split_model(nnx.eval_shape(critic_fn))
        c_sh = sharding_lib.state_shardings(abstract_critic, mesh)
        cr_sh = sharding_lib.state_shardings(abstract_rest, mesh)
        critic, critic_rest = jax.jit(
            lambda: state_lib.split_model(critic_fn())[1:], out_shardings=(c_sh, cr_sh)
        )()
    elif ppo.uses_critic:
        if config.value_init not in ("reward", "policy"):
            raise ValueError(f"value_init={config.value_init!r}; expected 'reward' or 'policy'")
        trunk_cfg = reward_cfg if config.value_init == "reward" else policy_cfg
        critic_fn = lambda: models.ScalarModel(trunk_cfg, kind="value", rngs=nnx.Rngs(config.seed))
        critic_g, abstract_critic, abstract_rest = state_lib.split_model(nnx.eval_shape(critic_fn))
        c_sh = sharding_lib.state_shardings(abstract_critic, mesh)
        cr_sh = sharding_lib.state_shardings(abstract_rest, mesh)

        def init_all_but_trunk():
            # The trunk comes from `source`: its random init is dead code XLA removes (compiling
            # it for a 0.5B model took 22 s on a CPU and 2.6 minutes on a GPU).
            _, params, rest = state_lib.split_model(critic_fn())
            return {k: v for k, v in params.items() if k != "trunk"}, rest

        no_trunk_sh = {k: v for k, v in c_sh.items() if k != "trunk"}
        head, critic_rest = jax.jit(init_all_but_trunk, out_shardings=(no_trunk_sh, cr_sh))()
        source = reward_params if config.value_init == "reward" else policy_params
        critic = nnx.State({**head, "trunk": _copy(source["trunk"])})
        # The value head stays zero (Huang et al. 2024).
    policy_tx, critic_tx = ppo_lib.optimizers(ppo)
    policy_sh = sharding_lib.state_shardings(policy_params, mesh)
    opt_sh = sharding_lib.tree_shardings(
        jax.eval_shape(policy_tx.init, policy_params), policy_sh, mesh
    )
    policy_opt = jax.jit(policy_tx.init, out_shardings=opt_sh)(policy_params)
    critic_opt = critic_opt_sh = critic_sh = None
    if critic is not None:
        critic_sh = sharding_lib.state_shardings(critic, mesh)
        critic_opt_sh = sharding_lib.tree_shardings(
            jax.eval_shape(critic_tx.init, critic), critic_sh, mesh
        )
        critic_opt = jax.jit(critic_tx.init, out_shardings=critic_opt_sh)(critic)
    repl = sharding_lib.replicated(mesh)
    frozen = {
        "reference": _copy(policy_params),
        "policy_rest": policy_rest,
        "reward": reward_params,
        "reward_rest": reward_rest,
        "critic_rest": critic_rest,
    }
    kl = losses.adaptive_kl_init(
        init_coef=ppo.kl_coef, target=ppo.kl_target, horizon=ppo.kl_horizon
    )
    state = ppo_lib.PPOState(
        iteration=jnp.zeros((), jnp.int32),
        policy=policy_params,
        policy_opt=policy_opt,
        critic=critic,
        critic_opt=critic_opt,
        frozen=frozen,
        kl=kl,
        score_norm=jnp.array([1.0, 0.0], jnp.float32),
        rng=jax.random.key_data(jax.random.key(config.seed)),
    )
    state = jax.device_put(state, jax.tree.map(lambda _: repl, state))
    shardings = ppo_lib.PPOState(
        iteration=repl,
        policy=policy_sh,
        policy_opt=opt_sh,
        critic=critic_sh,
        critic_opt=critic_opt_sh,
        frozen={
            "reference": policy_sh,
            "policy_rest": sharding_lib.state_shardings(policy_rest, mesh),
            "reward": sharding_lib.state_shardings(reward_params, mesh),
            "reward_rest": sharding_lib.state_shardings(reward_rest, mesh),
            "critic_rest": None
            if critic_rest is None
            else sharding_lib.state_shardings(critic_rest, mesh),
        },
        kl=jax.tree.map(lambda _: repl, kl),
        score_norm=repl,
        rng=repl,
    )
    state = jax.device_put(state, shardings)
    pooling = "last"
    if config.reward.artifact is not None:
        pooling = ckpt_lib.read_artifact_meta(config.reward.artifact).get("pooling") or "last"
    statics = ppo_lib.Models(
        policy=policy_g,
        critic=critic_g,
        reward=reward_g,
        eos_ids=eos_ids,
        pad_id=int(tokenizer.pad_token_id),
        reward_pooling=pooling,
    )
    return state, shardings, statics, policy_cfg, tokenizer


def fit_reward_normalisation(state, fns, sampler: PromptSampler, num_prompts: int, mesh, models_):
    """Gain and bias so the reward model's scores of SFT samples have mean 0 and std 1."""

    @jax.jit
    def raw(state, episodes):
        return ppo_lib.raw_scores(state.frozen, episodes, models=models_)

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
    run_dir = pathlib.Path(config.run_dir).absolute()
    mesh = sharding_lib.make_mesh(config.mesh)
    state, shardings, statics, policy_cfg, tokenizer = init_ppo_state(config, mesh)
    prompts = load_prompts(config.prompts, split=config.prompt_split)
    tokens, mask = models.encode_prompts(tokenizer, prompts, max_length=config.prompt_length)
    sampler = PromptSampler(
        tokens,
        mask,
        batch_size=config.prompts_per_iteration,
        seed=config.seed,
        repeat=config.ppo.samples_per_prompt,
    )
    episodes_per_iteration = config.prompts_per_iteration * config.ppo.samples_per_prompt
    fns = ppo_lib.build_iteration(statics, config.ppo, shardings, gold_fn=gold_fn)
    writer = MetricWriter(
        run_dir / "logs",
        total_steps=config.iterations,
        description="ppo",
        console=config.console,
        tensorboard=config.tensorboard,
        show=("objective/scores", "objective/kl", "objective/gold"),
    )
    fingerprint = {
        "phase": "ppo",
        "policy": phase_lib.model_config_to_dict(policy_cfg),
        "ppo": dataclasses.asdict(config.ppo),
        "prompts_per_iteration": config.prompts_per_iteration,
        "prompt_length": config.prompt_length,
        "seed": config.seed,
    }
    checkpointer = ckpt_lib.PhaseCheckpointer(
        run_dir / "checkpoints", fingerprint=fingerprint, config=config.checkpoint
    )
    norm_info = {}
    if checkpointer.latest_step() is not None:
        state, data_state = checkpointer.restore(state_lib.abstract_like(state, shardings))
        sampler.restore(data_state)
        writer.print(f"[ppo] resumed from iteration {int(jax.device_get(state.iteration))}")
    elif config.ppo.normalize_reward:
        state, norm_info = fit_reward_normalisation(
            state, fns, sampler, config.reward_norm_prompts, mesh, statics
        )
        mean, std = norm_info["reward_norm/raw_mean"], norm_info["reward_norm/raw_std"]
        writer.print(f"[ppo] reward normalisation on SFT samples: mean {mean:.4g}, std {std:.4g}")
    schedule = state_lib.make_schedule(config.ppo.policy_optimizer)
    updates_per_iteration = config.ppo.ppo_epochs * config.ppo.num_minibatches
    history = []
    iteration = int(jax.device_get(state.iteration))
    status = "finished"
    with interrupt_flag() as flag:
        while iteration < config.iterations:
            t0 = time.perf_counter()
            p_tokens, p_mask = sampler.next()
            batch = sharding_lib.shard_batch({"t": p_tokens, "m": p_mask}, mesh)
            if config.ppo.fuse_iteration:
                state, metrics, per_episode, _ = fns["fused"](state, batch["t"], batch["m"])
                jax.block_until_ready(state.iteration)
                times = {"time/iteration": time.perf_counter() - t0}
            else:
                episodes = jax.block_until_ready(fns["rollout"](state, batch["t"], batch["m"]))
                t1 = time.perf_counter()
                episodes, ep_metrics, per_episode = jax.block_until_ready(
                    fns["score"](state, episodes)
                )
                t2 = time.perf_counter()
                state, up_metrics = fns["update"](state, episodes)
                jax.block_until_ready(state.iteration)
                t3 = time.perf_counter()
                metrics = {**ep_metrics, **up_metrics}
                times = {
                    "time/rollout": t1 - t0,
                    "time/scoring": t2 - t1,
                    "time/update": t3 - t2,
                    "time/iteration": t3 - t0,
                }
            iteration += 1
            row = {
                **to_floats(metrics),
                **times,
                "episodes_per_second": episodes_per_iteration / times["time/iteration"],
                "lr": float(schedule((iteration - 1) * updates_per_iteration)),
                "iteration": iteration,
            }
            if monitor is not None:
                stats = {k: np.asarray(v) for k, v in jax.device_get(per_episode).items()}
                warnings = monitor.update(iteration, _monitor_stats(row, stats))
                for w in warnings:
                    writer.print(f"[ppo] warning: {w}")
            history.append(row)
            if iteration % config.log_every == 0 or iteration == config.iterations:
                writer.write(iteration, row)
            else:
                writer.advance(iteration)
            interrupted = flag["signal"] is not None or (
                stop_after is not None and iteration >= stop_after
            )
            force = interrupted or iteration == config.iterations
            if force or iteration % config.checkpoint.save_every == 0:
                checkpointer.save(iteration, state, sampler.state(), force=force)
            if interrupted:
                status = "interrupted"
                writer.print(f"[ppo] stopped at iteration {iteration}; checkpoint saved")
                break
    checkpointer.close()
    writer.close()
    if status == "finished":
        ckpt_lib.save_artifact(
            run_dir / "artifact",
            state.policy,
            meta={
                "phase": "ppo",
                "head": "lm",
                "model": phase_lib.model_config_to_dict(policy_cfg),
                "iterations": iteration,
            },
        )
    return {
        "status": status,
        "iteration": iteration,
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
