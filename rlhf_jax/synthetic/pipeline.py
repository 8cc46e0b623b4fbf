"""The whole pipeline on the embedded synthetic task, phase by phase, resumable.

    pretrain → SFT → [SL-CAI] → collect preferences → reward model → PPO → [later rounds]
    (and DPO on the same preferences) → evaluation report

SL-CAI (`synthetic.cai`, ``feedback.revise_prompts`` > 0: a branch from SFT, evaluated on its
own; preferences, PPO and DPO start from SFT) and the rounds of iterated RLHF
(`synthetic.rounds`, ``iteration.rounds`` > 1) are optional. Each phase writes its artifact
under ``<run_dir>/<phase>/``; a rerun skips every phase whose artifact exists and resumes an
unfinished one from its checkpoint, so an interrupted pipeline continues where it stopped.
Everything is judged against the task's gold reward r*, which no phase trains on: the reward
model learns from simulated raters' labels, or from a feedback model's (``feedback.labels``).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any

import numpy as np

from rlhf_jax import checkpoint as ckpt_lib
from rlhf_jax import data as data_lib
from rlhf_jax import models, rewards
from rlhf_jax import sharding as sharding_lib
from rlhf_jax.generation import SamplingConfig
from rlhf_jax.inference import Sampler
from rlhf_jax.interrupts import interrupt_flag
from rlhf_jax.logging import jsonable
from rlhf_jax.placement import ModelSource, place_model
from rlhf_jax.synthetic import cai, collect
from rlhf_jax.synthetic import evaluate as evaluate_lib
from rlhf_jax.synthetic import rounds as rounds_lib
from rlhf_jax.synthetic import task as task_lib
from rlhf_jax.synthetic.pipeline_config import (
    BASE_PHASES,
    PHASES,
    RATER_FIELDS,
    PipelineConfig,
    PPOStage,
    Stage,
    normalised_record,
)
from rlhf_jax.training import dpo as dpo_lib
from rlhf_jax.training import ppo as ppo_lib
from rlhf_jax.training import reward as reward_lib
from rlhf_jax.training import sft as sft_lib
from rlhf_jax.training.loop import RunLock
from rlhf_jax.training.phase import Phase, run_phase


class Pipeline:
    """Runs the phases of ``PipelineConfig`` in order, skipping finished ones."""

    def __init__(self, config: PipelineConfig):
        self.config = config
        self.root = pathlib.Path(config.run_dir).absolute()
        self.root.mkdir(parents=True, exist_ok=True)
        self.task = task_lib.SyntheticTask(config.task)
        self.tokenizer_dir = self.root / "tokenizer"
        if not (self.tokenizer_dir / "tokenizer.json").exists():
            self.task.write_tokenizer(self.tokenizer_dir)
        self.tokenizer = models.load_tokenizer(self.tokenizer_dir)
        (self.root / "pipeline.json").write_text(
            json.dumps(jsonable(dataclasses.asdict(config)), indent=2)
        )
        self.base = None if config.base_run_dir is None else self._check_base(config.base_run_dir)
        self.timings: dict[str, float] = {}
        self.mesh = sharding_lib.make_mesh(config.mesh)
        # The vocabulary is the task's exactly (the gold reward knows no other token), and the
        # special ids are the task tokenizer's.
        self.model_config = dataclasses.replace(
            config.model,
            vocab_size=self.task.vocab_size,
            eos_token_ids=(task_lib.EOS_ID,),
            pad_token_id=task_lib.PAD_ID,
            bos_token_id=task_lib.BOS_ID,
        )

    # -- helpers -------------------------------------------------------------------------------
    def path(self, *parts) -> pathlib.Path:
        return self.root.joinpath(*parts)

    def artifact(self, phase: str) -> pathlib.Path:
        """Where ``phase``'s artifact is: this run's, or the base run's for pretrain and SFT."""
        if self.base is not None and phase in BASE_PHASES:
            return self.base / phase / "artifact"
        if phase == "rounds":  # iterated RLHF's policy: the last round's PPO
            return self.path("rounds", f"round_{self.config.iteration.rounds}", "ppo", "artifact")
        return self.path(phase, "artifact")

    def done(self, phase: str) -> bool:
        if phase in ("preferences", "rounds", "evaluate"):
            return self.path(phase, "DONE").exists()
        if self.base is not None and phase in BASE_PHASES:
            if not ckpt_lib.artifact_exists(self.artifact(phase)):
                raise ValueError(
                    f"base_run_dir={self.config.base_run_dir!r} has no finished {phase} phase "
                    f"({self.artifact(phase)}); run that pipeline first (its own config, "
                    f"--config.run_dir={self.config.base_run_dir})"
                )
            return True
        return ckpt_lib.artifact_exists(self.path(phase, "artifact"))

    def _check_base(self, base_run_dir: str) -> pathlib.Path:
        """The base run's directory, after checking that its pretrain and SFT are the ones this
        config would train (the fields that reach them are equal)."""
        base = pathlib.Path(base_run_dir).absolute()
        if base == self.root:
            raise ValueError(f"base_run_dir is this run's own directory ({base})")
        saved_path = base / "pipeline.json"
        if not saved_path.exists():
            raise ValueError(
                f"base_run_dir={base_run_dir!r} holds no pipeline.json: not a pipeline run "
                "directory (or one written before runs recorded their config)"
            )
        saved = normalised_record(json.loads(saved_path.read_text()), saved_path)
        now = normalised_record(jsonable(dataclasses.asdict(self.config)), saved_path)
        fields = {
            "model": lambda c: c["model"],
            "bucket_lengths": lambda c: c["bucket_lengths"],
            "train.pretrain": lambda c: c["train"]["pretrain"],
            "train.sft": lambda c: c["train"]["sft"],
            "seed": lambda c: c["seed"],
            "task": lambda c: {k: v for k, v in c["task"].items() if k not in RATER_FIELDS},
        }
        differ = [name for name, get in fields.items() if get(saved) != get(now)]
        if differ:
            raise ValueError(
                f"base_run_dir={base_run_dir!r} was run with other {', '.join(differ)} than this "
                "config: its pretrain and SFT are not the ones this run would train"
            )
        return base

    def enabled(self, phase: str) -> bool:
        """GRPO and SL-CAI are optional (``train.grpo.iterations=0``, ``feedback.revise_prompts
        =0`` leave them out); every other phase runs."""
        if phase == "sl_cai":
            return self.config.feedback.revise_prompts > 0
        if phase == "rounds":
            return self.config.iteration.rounds > 1
        return phase != "grpo" or self.config.train.grpo.iterations > 0

    def source(self, artifact_phase: str | None) -> ModelSource:
        if artifact_phase is None:
            return ModelSource(init=self.model_config, tokenizer=str(self.tokenizer_dir))
        return ModelSource(
            artifact=str(self.artifact(artifact_phase)), tokenizer=str(self.tokenizer_dir)
        )

    def write_rows(self, name: str, rows) -> str:
        path = self.path("data", name)
        path.parent.mkdir(parents=True, exist_ok=True)
        return task_lib.write_jsonl(path, rows)

    def run_stage(self, phase: Phase, name: str, stage: Stage, *, model, data_path, **extra):
        """Runs ``phase`` with the schedule ``stage`` in ``<run_dir>/<name>`` (or at ``name``
        if absolute); ``extra`` holds the phase's own config section (``reward=``, ``dpo=``)
        and any data settings (``bucket_lengths=``)."""
        c = self.config
        buckets = extra.pop("bucket_lengths", c.bucket_lengths)
        config = phase.config_type(
            run_dir=str(self.path(name)),
            model=model,
            data=data_lib.DataConfig(
                path=data_path,
                bucket_lengths=buckets,
                batch_size=stage.batch_size,
                seed=c.seed,
                eval_fraction=stage.eval_fraction,
            ),
            optimizer=stage.optimizer,
            mesh=c.mesh,
            checkpoint=ckpt_lib.CheckpointConfig(save_every=max(stage.steps // 2, 1), keep=1),
            total_steps=stage.steps,
            grad_accum_steps=stage.grad_accum_steps,
            log_every=max(stage.steps // 20, 1),
            seed=c.seed,
            console=c.console,
            tensorboard=True,
            **extra,
        )
        return run_phase(phase, config)

    def encode(self, prompts) -> tuple[np.ndarray, np.ndarray]:
        """Prompt token ids and masks, left-padded to the task's longest prompt."""
        return models.encode_prompts(
            self.tokenizer, prompts, max_length=self.task.max_prompt_tokens
        )

    def policy_sampler(self, phase: str, *, temperature: float, batch_size: int = 256):
        """(the policy ``phase`` trained (or at the artifact path ``phase``), a `Sampler` of it
        at ``temperature``)."""
        path = self.artifact(phase) if phase in PHASES else phase  # a phase, or a path
        policy = place_model(str(path), head="lm", mesh=self.mesh)
        sampling = SamplingConfig(
            max_new_tokens=self.config.ppo.response_length,
            temperature=temperature,
            eos_ids=(task_lib.EOS_ID,),
            pad_id=task_lib.PAD_ID,
        )
        return policy, Sampler(policy, sampling, batch_size=batch_size)

    # -- phases --------------------------------------------------------------------------------
    def pretrain(self):
        c = self.config
        rows = self.task.pretraining_corpus(c.train.pretrain.examples)
        path = self.write_rows("pretrain.jsonl", rows)
        # Pretraining texts hold several examples: one bucket fits the longest of them.
        longest = self.task.max_pretraining_tokens
        buckets = tuple(sorted({*(b for b in c.bucket_lengths if b < longest), longest}))
        return self.run_stage(
            sft_lib.PHASE,
            "pretrain",
            c.train.pretrain,
            model=self.source(None),
            data_path=path,
            bucket_lengths=buckets,
        )

    def sft(self):
        c = self.config
        rows = self.task.demonstrations(c.train.sft.examples)
        path = self.write_rows("demonstrations.jsonl", rows)
        return self.run_stage(
            sft_lib.PHASE, "sft", c.train.sft, model=self.source("pretrain"), data_path=path
        )

    def preferences(self):
        """Pairs sampled from the SFT policy, labelled by the simulated raters (or, with
        ``feedback.labels="ai"``, the feedback model: RL-CAI)."""
        c = self.config
        prompts = self.task.prompts(c.preferences.prompts, split="train")
        data = self.path("data", "preferences.jsonl")
        data.parent.mkdir(parents=True, exist_ok=True)
        return collect.collect_preferences(
            self, "sft", prompts, self.path("preferences"), data, seed=c.seed + 101
        )

    def _on_preferences(self, phase: Phase, **section):
        """The reward or DPO phase: the SFT policy trained on the labelled pairs."""
        return self.run_stage(
            phase,
            phase.name,
            getattr(self.config.train, phase.name),
            model=self.source("sft"),
            data_path=str(self.path("data", "preferences.jsonl")),
            **section,
        )

    def sl_cai(self):
        return cai.sl_cai(self)

    def rounds(self):
        return rounds_lib.run_rounds(self)

    def reward(self):
        return self._on_preferences(reward_lib.PHASE, reward=self.config.reward)

    def dpo(self):
        return self._on_preferences(dpo_lib.PHASE, dpo=self.config.dpo)

    def run_rl(
        self, name: str, stage: PPOStage, ppo, *, reward, reward_functions=(), stop_after=None,
        policy=None, reference=None, prompts=None,
    ):  # fmt: skip
        """An RL phase (PPO or GRPO) with the hacking monitors, in ``<run_dir>/<name>`` (or at
        ``name`` if absolute): from ``policy`` (default: the SFT policy) against ``reference``
        (default: the policy's start), on ``prompts`` (default: ``stage.prompts`` train ones)."""
        c = self.config
        prompts = prompts or self.task.prompts(stage.prompts, split="train")
        path = self.write_rows(f"{name}_prompts.jsonl", [{"prompt": p} for p in prompts])
        run = ppo_lib.PPORunConfig(
            run_dir=str(self.path(name)),
            policy=policy or self.source("sft"),
            reference=reference,
            reward=reward,
            prompts=path,
            prompt_length=self.task.max_prompt_tokens,
            prompts_per_iteration=stage.prompts_per_iteration,
            iterations=stage.iterations,
            ppo=ppo,
            mesh=c.mesh,
            checkpoint=ckpt_lib.CheckpointConfig(save_every=max(stage.iterations // 4, 1), keep=1),
            log_every=max(stage.iterations // 20, 1),
            seed=c.seed,
            console=c.console,
            monitor=c.monitor,
        )
        # The runner keeps <name>/history.jsonl and monitors.json; the monitors' state travels
        # in its checkpoints.
        return ppo_lib.run_ppo(
            run,
            gold_fn=self.task.gold_reward_tokens,
            stop_after=stop_after,
            reward_functions=reward_functions,
            features=(rewards.RewardFunction("echo", "tokens", self.task.echo_rate_tokens),),
        )

    def ppo(self, *, stop_after: int | None = None):
        """PPO against the reward model (the proxy)."""
        c = self.config
        return self.run_rl(
            "ppo", c.train.ppo, c.ppo, reward=self.source("reward"), stop_after=stop_after
        )

    def grpo(self, *, stop_after: int | None = None):
        """GRPO against the gold reward itself, a verifiable reward: no reward model, no proxy
        to game; what RL reaches when the reward is right."""
        c = self.config
        gold = rewards.RewardFunction("gold", "tokens", self.task.gold_reward_tokens)
        return self.run_rl(
            "grpo",
            c.train.grpo,
            c.grpo,
            reward=None,
            reward_functions=(rewards.WeightedFunction(gold, 1.0),),
            stop_after=stop_after,
        )

    def evaluate(self):
        return evaluate_lib.evaluate(self)

    def run(self, *, stop_after_phase: str | None = None) -> dict[str, Any]:
        """Runs every unfinished phase; ``stop_after_phase`` ends the run after that one.

        SIGTERM/SIGINT anywhere stops the run at the next safe point (a phase's loop stops at
        its next step; between phases the pipeline stops before the next one), with every
        finished phase's output intact; the same command resumes."""
        lock = RunLock(self.root)  # one pipeline at a time in run_dir
        try:
            with interrupt_flag() as flag:
                return self._run(flag, stop_after_phase)
        finally:
            lock.release()

    def _run(self, flag, stop_after_phase):
        results = {}
        for phase in PHASES:
            if not self.enabled(phase):
                continue
            if flag["signal"] is not None:
                print(f"[pipeline] {flag['signal']}: stopped before {phase}; rerun to resume")
                return {"status": "interrupted", "phase": phase}
            if self.done(phase):
                print(f"[pipeline] {phase}: done already, skipped")
            else:
                start = time.perf_counter()
                result = getattr(self, phase)()
                if isinstance(result, dict) and result.get("status") == "interrupted":
                    print(f"[pipeline] {phase} interrupted; rerun to resume")
                    return {"status": "interrupted", "phase": phase}
                self.timings[phase] = time.perf_counter() - start
                results[phase] = result
                print(f"[pipeline] {phase}: {self.timings[phase]:.1f} s")
                timings_path = self.path("timings.json")
                saved = json.loads(timings_path.read_text()) if timings_path.exists() else {}
                saved[phase] = self.timings[phase]
                timings_path.write_text(json.dumps(saved, indent=2))
            if phase == stop_after_phase:
                return {"status": "stopped", "phase": phase, "results": results}
        return {"status": "finished", "results": results}
