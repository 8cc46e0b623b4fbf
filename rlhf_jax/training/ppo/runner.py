"""Running PPO (or GRPO, RLOO) end to end: the models, the prompts, the rewards, the loop.

    result = run_ppo(PPORunConfig(...), gold_fn=..., monitor=...)

The models share one mesh (`rlhf_jax.placement`): the policy (trained), the reference (frozen
copy of the initial policy), the reward model (frozen; optional when reward functions give the
score) and the critic (trained; from the reward model's trunk with a zero value head, from the
policy's trunk, or a value head alone on the policy's trunk; none for GRPO/RLOO). Each
iteration is three compiled programs (rollout, score, update — timed separately; text reward
functions run on the host between rollout and score) or one (``ppo.fuse_iteration``), driven
by the loop every phase shares (`loop.Run`: resume, SIGTERM, checkpoints, the non-finite guard,
metrics). A checkpoint holds the whole ``PPOState`` and the prompt position, so a resumed run
continues exactly.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from rlhf_jax import checkpoint as ckpt_lib
from rlhf_jax import provenance, rewards
from rlhf_jax import sharding as sharding_lib
from rlhf_jax.evaluation.monitors import HackingMonitor, MonitorConfig
from rlhf_jax.logging import jsonable, to_floats
from rlhf_jax.placement import ModelSource, adapter_meta
from rlhf_jax.training.loop import Run
from rlhf_jax.training.optimizer import make_schedule
from rlhf_jax.training.ppo import sampling
from rlhf_jax.training.ppo.config import PPOConfig
from rlhf_jax.training.ppo.programs import build_iteration
from rlhf_jax.training.ppo.prompts import PromptSampler, encode_prompt_file
from rlhf_jax.training.ppo.setup import (
    fit_reward_normalisation,
    init_ppo_state,
    monitor_features,
    reward_sources,
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PPORunConfig:
    run_dir: str  # checkpoints, logs and the final policy artifact
    policy: ModelSource  # the SFT policy (also the frozen reference, unless ``reference``)
    # The frozen reference of the KL penalty when it is not the policy's start (e.g. iterated
    # RLHF continues a later round's policy against the SFT policy); same architecture.
    reference: ModelSource | None = None
    reward: ModelSource | None = None  # the reward model; None: reward functions only
    rewards: rewards.RewardsConfig = dataclasses.field(default_factory=rewards.RewardsConfig)
    prompts: str  # a .json/.jsonl/.parquet file (or hub dataset) with a "prompt" column
    prompt_split: str = "train"  # its split
    prompt_column: str = "prompt"  # the column holding the prompts (strings or chat messages)
    prompt_length: int = 32  # P: prompts are left-padded to this; longer ones are left out
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
    wandb_project: str | None = None  # also log to this Weights & Biases project (None: off)
    # Features of the responses the monitors correlate with the reward and watch drift
    # (reward functions by name or dotted path, options in rewards.kwargs; never in the score)
    monitor_features: tuple[str, ...] = ()
    # Thresholds of the reward-hacking monitors, which watch every iteration (warnings on the
    # console; statistics logged as monitor/...; a summary in <run_dir>/monitors.json)
    monitor: MonitorConfig = dataclasses.field(default_factory=MonitorConfig)


def _iteration_fn(fns, sampler: PromptSampler, host_rewards, mesh, config: PPORunConfig):
    """The loop's step adapter: one iteration on the next prompts, its metrics as floats
    (with each program's time when the iteration runs as three)."""
    ppo = config.ppo
    schedule = make_schedule(ppo.policy_optimizer, ppo.optimizer_steps(config.iterations))
    updates_per_iteration = ppo.ppo_epochs * ppo.num_minibatches
    episodes_per_iteration = config.prompts_per_iteration * ppo.samples_per_prompt

    def experience_round(state, round_index=None):
        p_tokens, p_mask, indices = sampler.next()
        batch = sharding_lib.shard_batch({"t": p_tokens, "m": p_mask}, mesh)
        if round_index is None:
            episodes = fns["rollout"](state, batch["t"], batch["m"])
        else:
            episodes = fns["rollout"](state, batch["t"], batch["m"], jnp.int32(round_index))
        episodes = jax.block_until_ready(episodes)
        t_rollout = time.perf_counter()
        host_scores, host_metrics, host_features = host_rewards(episodes, indices)
        if host_features:
            episodes = dict(episodes, features_B=host_features)
        episodes, ep_metrics, per_episode = fns["score"](state, episodes, host_scores)
        return episodes, ep_metrics, per_episode, host_metrics, t_rollout

    def dynamic(state):
        rounds, host_metrics = [], {}
        for r in range(ppo.max_sampling_rounds):
            episodes, _, per_episode, host_metrics, _ = experience_round(state, r)
            scores = sampling.to_host(per_episode["scores_B"])
            rounds.append((episodes, sampling.informative_groups(scores, ppo.samples_per_prompt)))
            if sum(inf.sum() for _, inf in rounds) >= config.prompts_per_iteration:
                break
        episodes, info = sampling.assemble(
            rounds, config.prompts_per_iteration, ppo.samples_per_prompt
        )
        per_episode = {k: episodes[k] for k in per_episode}
        ep_metrics = {**fns["metrics"](state, episodes), **info}
        return episodes, ep_metrics, per_episode, host_metrics

    def step(state):
        t0 = time.perf_counter()
        if ppo.fuse_iteration:
            p_tokens, p_mask, _ = sampler.next()
            batch = sharding_lib.shard_batch({"t": p_tokens, "m": p_mask}, mesh)
            state, metrics, per_episode, _ = fns["fused"](state, batch["t"], batch["m"])
            jax.block_until_ready(state.step)
            times = {"time/iteration": time.perf_counter() - t0}
        else:
            if ppo.dynamic_sampling:
                episodes, ep_metrics, per_episode, host_metrics = dynamic(state)
                t1 = time.perf_counter()  # rollouts and scoring, all rounds
            else:
                episodes, ep_metrics, per_episode, host_metrics, t1 = experience_round(state)
            episodes, ep_metrics, per_episode = jax.block_until_ready(
                (episodes, ep_metrics, per_episode)
            )
            t2 = time.perf_counter()
            state, up_metrics = fns["update"](state, episodes)
            jax.block_until_ready(state.step)
            t3 = time.perf_counter()
            metrics = {**ep_metrics, **up_metrics, **host_metrics}
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
    reward_functions: tuple[rewards.WeightedFunction, ...] = (),
    features: tuple[rewards.RewardFunction, ...] = (),
) -> dict[str, Any]:
    """Runs (or resumes) PPO; returns the per-iteration history and the final state.

    ``gold_fn(prompt_BxP, prompt_mask_BxP, response_BxN, response_mask_BxN) -> gold_B`` (jittable)
    adds ``objective/gold`` where a gold reward exists; ``monitor`` (an
    ``rlhf_jax.evaluation.HackingMonitor``; default: one with ``config.monitor``'s thresholds)
    sees every iteration's per-episode statistics, and its summary is written to
    ``<run_dir>/monitors.json``;
    ``reward_functions`` are reward functions given as objects (e.g. a task's verifiable
    reward) beside the configured ones; ``features`` are monitor features given as objects
    beside ``config.monitor_features`` (their per-episode values go to ``monitor`` and their
    means to the history as ``features/<name>/mean``). The history (every iteration's metrics,
    also in ``<run_dir>/history.jsonl``) and the monitor's state survive an interruption: a resumed
    run's equal an uninterrupted one's.
    """
    mesh = sharding_lib.make_mesh(config.mesh)
    state, shardings, statics, policy_cfg, tokenizer = init_ppo_state(
        config, mesh, reward_functions=reward_functions
    )
    functions = reward_sources(config, reward_functions)
    feature_functions = monitor_features(config, features)
    if monitor is None:
        monitor = HackingMonitor(config.monitor)
    prompts = encode_prompt_file(
        tokenizer,
        config.prompts,
        split=config.prompt_split,
        max_length=config.prompt_length,
        column=config.prompt_column,
    )
    sampler = PromptSampler(
        prompts.tokens_NxP,
        prompts.mask_NxP,
        batch_size=config.prompts_per_iteration,
        seed=config.seed,
        repeat=config.ppo.samples_per_prompt,
    )
    host_rewards = sampling.HostRewards(
        functions, tokenizer, statics.eos_ids, prompts, mesh, features=feature_functions
    )
    fns = build_iteration(
        statics,
        config.ppo,
        shardings,
        iterations=config.iterations,
        gold_fn=gold_fn,
        feature_fns=tuple((f.name, f.fn) for f in feature_functions if f.kind == "tokens"),
    )
    fingerprint = {
        "phase": "ppo",
        "policy": policy_cfg.to_dict(),
        "ppo": dataclasses.asdict(config.ppo),
        "rewards": dataclasses.asdict(config.rewards),
        "reward_functions": [(f.name, f.weight) for f in functions],
        "reward_model": config.reward is not None,
        "prompts": {
            "path": config.prompts,
            "split": config.prompt_split,
            "column": config.prompt_column,
            "sha256": ckpt_lib.sha256_file(pathlib.Path(config.prompts))
            if pathlib.Path(config.prompts).is_file()
            else None,
        },
        "prompts_per_iteration": config.prompts_per_iteration,
        "iterations": config.iterations,  # the schedules' length
        "prompt_length": config.prompt_length,
        "seed": config.seed,
        **({"reference": dataclasses.asdict(config.reference)} if config.reference else {}),
        # A run with adapters resumes only with the same ones (absent without, as before).
        **({"lora": config.policy.adapters.to_dict()} if config.policy.adapters else {}),
    }
    norm_info = {}
    with Run(
        config.run_dir,
        description="ppo",
        total_steps=config.iterations,
        fingerprint=fingerprint,
        checkpoint=config.checkpoint,
        console=config.console,
        tensorboard=config.tensorboard,
        wandb_project=config.wandb_project,
        run_config=config,
        show=("objective/scores", "objective/kl", "objective/gold"),
        unit="iteration",
        saves_per_run=20,  # an RL run is long: a save every 5% of it, at least every 2
        min_save_every=2,
    ) as run:
        if prompts.num_dropped:
            run.print(prompts.summary(config.prompts, config.prompt_length))

        def restore_data(saved):
            sampler.restore(saved["prompts"])
            if saved.get("monitor") is not None:
                monitor.load_state_dict(saved["monitor"])

        state, resumed = run.resume(state, shardings, restore_data)
        history = History(run.dir / "history.jsonl", int(jax.device_get(state.step)))
        if not resumed and config.ppo.normalize_reward and statics.reward is not None:
            state, norm_info = fit_reward_normalisation(
                state, fns, sampler, config.ppo.reward_norm_prompts, mesh, statics
            )
            mean, std = norm_info["reward_norm/raw_mean"], norm_info["reward_norm/raw_std"]
            run.print(f"reward normalisation on SFT samples: mean {mean:.4g}, std {std:.4g}")
        iteration = _iteration_fn(fns, sampler, host_rewards, mesh, config)

        def step(state):
            state, row, per_episode = iteration(state)
            stats = jax.tree.map(sampling.to_host, per_episode)
            monitor.update(row["iteration"], _monitor_stats(row, stats), log=False)
            for warning in monitor.started:  # once when it starts; all are in the summary
                run.print(f"warning: {warning}")
            row.update(monitor.latest)  # the statistics the monitors watched, logged
            history.append(row)
            return state, row

        def data_state():
            return {
                "prompts": sampler.state(),
                "monitor": monitor.state_dict(),
            }

        state, status = run.loop(
            state,
            step,
            data_state,
            log_every=config.log_every,
            skip_nonfinite=config.skip_nonfinite,
            stop_after=stop_after,
        )
        iterations_done = int(jax.device_get(state.step))
        if status == "finished":
            meta = {"phase": "ppo", "head": "lm", "model": policy_cfg.to_dict()}
            meta.update(adapter_meta(config.policy, config.seed))
            meta.update(
                provenance.record(
                    config=config, sources={"policy": config.policy, "reward": config.reward},
                    data=[config.prompts], trunk="policy",
                )
            )  # fmt: skip
            run.save_artifact(
                state.policy, {**meta, "iterations": iterations_done}, tokenizer=tokenizer
            )
        if jax.process_index() == 0:
            summary = json.dumps(jsonable(monitor.summary()), indent=2)
            (run.dir / "monitors.json").write_text(summary)
    return {
        "status": status,
        "iteration": iterations_done,
        "history": history.rows,
        "state": state,
        "statics": statics,
        "tokenizer": tokenizer,
        "reward_norm": norm_info,
        "fns": fns,
        "prompts": prompts,
        "monitor": monitor,
    }


class History:
    """The run's per-iteration rows, in ``history.jsonl`` beside its checkpoints: written as
    they come (process 0), and on a resume cut back to the restored iteration, so the file and
    ``rows`` always hold the whole run exactly once."""

    def __init__(self, path: pathlib.Path, resumed_at: int):
        self.path = path
        rows = []
        if resumed_at and path.exists():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            rows = [row for row in rows if row["iteration"] <= resumed_at]
        self.rows = rows
        if jax.process_index() == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(row) + "\n" for row in rows))

    def append(self, row: dict) -> None:
        self.rows.append(row)
        if jax.process_index() == 0:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")


def _monitor_stats(row: dict, per_episode: dict) -> dict:
    stats = {
        "proxy_scores_B": per_episode["scores_B"],
        "lengths_B": per_episode["lengths_B"],
        "kl": row["objective/kl"],
        "entropy": row["objective/entropy"],
    }
    if "gold_B" in per_episode:
        stats["gold_scores_B"] = per_episode["gold_B"]
    if "features_B" in per_episode:
        stats["features"] = per_episode["features_B"]
    return stats
