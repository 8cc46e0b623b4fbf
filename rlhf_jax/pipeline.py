"""The whole pipeline on the embedded synthetic task, phase by phase, resumable.

    pretrain → SFT → collect preferences → reward model → PPO   (and DPO on the same
    preferences) → evaluation report

Each phase writes its artifact under ``<run_dir>/<phase>/``; a rerun skips every phase whose
artifact exists and resumes an unfinished one from its checkpoint, so an interrupted pipeline
continues where it stopped. Everything is judged against the task's gold reward r*, which no
phase trains on: the reward model learns from simulated raters' labels only.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any

import jax
import numpy as np

from rlhf_jax import checkpoint as ckpt_lib
from rlhf_jax import data as data_lib
from rlhf_jax import evaluation as ev
from rlhf_jax import models
from rlhf_jax import sharding as sharding_lib
from rlhf_jax.data import synthetic
from rlhf_jax.generation import SamplingConfig
from rlhf_jax.policy_io import Sampler, decode_responses, load_model
from rlhf_jax.training import phase as phase_lib
from rlhf_jax.training import ppo as ppo_lib
from rlhf_jax.training import ppo_runner
from rlhf_jax.training.state import OptimizerConfig

PHASES = ("pretrain", "sft", "preferences", "reward", "ppo", "dpo", "evaluate")


@dataclasses.dataclass(frozen=True, kw_only=True)
class StageConfig:
    """One supervised phase (pretrain, SFT, reward model, DPO)."""

    steps: int  # optimizer steps
    batch_size: int  # sequences (or pairs) per step
    learning_rate: float  # peak learning rate
    warmup_steps: int = 0  # linear warmup
    examples: int = 0  # rows of data generated for the phase (pretrain corpus, demos)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PreferenceConfig:
    prompts: int = 2048  # prompts; two SFT samples each, labelled by the simulated raters
    temperature: float = 1.0  # sampling temperature of the pairs


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalConfig:
    prompts: int = 200  # held-out prompts
    samples_per_prompt: int = 4  # samples per prompt and policy (their mean gold is compared)
    best_of_n: int = 16  # SFT samples per prompt for the best-of-n baseline
    red_team: tuple[str, ...] = ()  # adversarial prompts (default: the task's hardest cases)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    run_dir: str  # everything the run writes
    task: synthetic.SyntheticTaskConfig = dataclasses.field(
        default_factory=synthetic.SyntheticTaskConfig
    )
    model: models.ModelConfig  # base LM architecture (random init; vocab_size is the task's)
    bucket_lengths: tuple[int, ...] = (16, 24)  # static sequence lengths for the phases
    pretrain: StageConfig
    sft: StageConfig
    preferences: PreferenceConfig = dataclasses.field(default_factory=PreferenceConfig)
    reward: StageConfig
    dpo: StageConfig
    dpo_beta: float = 0.1  # DPO β
    reward_pooling: str = "mean"  # reward model readout: "last" token or "mean" over response
    ppo: ppo_lib.PPOConfig = dataclasses.field(default_factory=ppo_lib.PPOConfig)
    ppo_iterations: int = 100  # PPO iterations
    ppo_prompts_per_iteration: int = 64  # prompts per PPO iteration
    ppo_train_prompts: int = 4096  # size of the PPO prompt set
    evaluation: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    mesh: sharding_lib.MeshConfig = dataclasses.field(default_factory=sharding_lib.MeshConfig)
    monitor: ev.MonitorConfig = dataclasses.field(default_factory=ev.MonitorConfig)
    seed: int = 0  # model init and sampling
    console: bool = True  # progress bars


def _stage_phase_config(
    config: PipelineConfig,
    name: str,
    stage: StageConfig,
    *,
    model,
    data_path,
    kind,
    bucket_lengths=None,
) -> phase_lib.PhaseConfig:
    return phase_lib.PhaseConfig(
        run_dir=str(pathlib.Path(config.run_dir) / name),
        model=model,
        data=data_lib.DataConfig(
            path=data_path,
            bucket_lengths=bucket_lengths or config.bucket_lengths,
            batch_size=stage.batch_size,
            seed=config.seed,
            eval_fraction=0.1 if kind == "reward" else 0.0,
        ),
        optimizer=OptimizerConfig(
            learning_rate=stage.learning_rate,
            warmup_steps=stage.warmup_steps,
            total_steps=stage.steps,
            schedule="cosine",
            end_lr_fraction=0.1,
        ),
        mesh=config.mesh,
        checkpoint=ckpt_lib.CheckpointConfig(save_every=max(stage.steps // 2, 1), keep=1),
        total_steps=stage.steps,
        log_every=max(stage.steps // 20, 1),
        seed=config.seed,
        dpo=phase_lib.DPOLossConfig(beta=config.dpo_beta),
        reward=phase_lib.RewardLossConfig(pooling=config.reward_pooling),
        console=config.console,
        tensorboard=True,
    )


class Pipeline:
    """Runs the phases of ``PipelineConfig`` in order, skipping finished ones."""

    def __init__(self, config: PipelineConfig):
        self.config = config
        self.root = pathlib.Path(config.run_dir).absolute()
        self.root.mkdir(parents=True, exist_ok=True)
        self.task = synthetic.SyntheticTask(config.task)
        self.tokenizer_dir = self.root / "tokenizer"
        if not (self.tokenizer_dir / "tokenizer.json").exists():
            self.task.write_tokenizer(self.tokenizer_dir)
        self.tokenizer = models.load_tokenizer(self.tokenizer_dir)
        self.timings: dict[str, float] = {}
        self.mesh = sharding_lib.make_mesh(config.mesh)
        # The vocabulary is the task's exactly (the gold reward knows no other token), and the
        # special ids are the task tokenizer's.
        self.model_config = dataclasses.replace(
            config.model,
            vocab_size=self.task.vocab_size,
            eos_token_ids=(synthetic.EOS_ID,),
            pad_token_id=synthetic.PAD_ID,
            bos_token_id=synthetic.BOS_ID,
        )

    # -- helpers -------------------------------------------------------------------------------
    def path(self, *parts) -> pathlib.Path:
        return self.root.joinpath(*parts)

    def done(self, phase: str) -> bool:
        if phase in ("preferences", "evaluate"):
            return self.path(phase, "DONE").exists()
        return ckpt_lib.artifact_exists(self.path(phase, "artifact"))

    def _source(self, artifact_phase: str | None) -> phase_lib.ModelSource:
        if artifact_phase is None:
            return phase_lib.ModelSource(init=self.model_config, tokenizer=str(self.tokenizer_dir))
        return phase_lib.ModelSource(
            artifact=str(self.path(artifact_phase, "artifact")), tokenizer=str(self.tokenizer_dir)
        )

    def _write_rows(self, name: str, rows) -> str:
        path = self.path("data", name)
        path.parent.mkdir(parents=True, exist_ok=True)
        return synthetic.write_jsonl(path, rows)

    def _encode(self, prompts) -> tuple[np.ndarray, np.ndarray]:
        return models.encode_prompts(
            self.tokenizer, prompts, max_length=self.task.max_prompt_tokens
        )

    # -- phases --------------------------------------------------------------------------------
    def pretrain(self):
        c = self.config
        rows = self.task.pretraining_corpus(c.pretrain.examples)
        path = self._write_rows("pretrain.jsonl", rows)
        # Pretraining texts hold several examples: one bucket fits the longest of them.
        longest = self.task.max_pretraining_tokens
        buckets = tuple(sorted({*(b for b in c.bucket_lengths if b < longest), longest}))
        cfg = _stage_phase_config(
            c,
            "pretrain",
            c.pretrain,
            model=self._source(None),
            data_path=path,
            kind="sft",
            bucket_lengths=buckets,
        )
        return phase_lib.run_phase(cfg, kind="sft")

    def sft(self):
        c = self.config
        path = self._write_rows("demonstrations.jsonl", self.task.demonstrations(c.sft.examples))
        cfg = _stage_phase_config(
            c, "sft", c.sft, model=self._source("pretrain"), data_path=path, kind="sft"
        )
        return phase_lib.run_phase(cfg, kind="sft")

    def _policy_sampler(self, phase: str, *, temperature: float, batch_size: int = 256):
        policy = load_model(str(self.path(phase, "artifact")), kind="sft", mesh=self.mesh)
        sampling = SamplingConfig(
            max_new_tokens=self.config.ppo.response_length,
            temperature=temperature,
            eos_ids=(synthetic.EOS_ID,),
            pad_id=synthetic.PAD_ID,
        )
        return policy, Sampler(policy, sampling, batch_size=batch_size)

    def preferences(self):
        """Pairs sampled from the SFT policy, labelled by the simulated raters."""
        c = self.config
        prompts = self.task.prompts(c.preferences.prompts, split="train")
        tokens, mask = self._encode(prompts)
        _, sampler = self._policy_sampler("sft", temperature=c.preferences.temperature)
        key = jax.random.key(c.seed + 101)
        a_tok, a_mask = sampler(tokens, mask, jax.random.fold_in(key, 0))
        b_tok, b_mask = sampler(tokens, mask, jax.random.fold_in(key, 1))
        a_text, a_end = decode_responses(self.tokenizer, a_tok, a_mask, synthetic.EOS_ID)
        b_text, b_end = decode_responses(self.tokenizer, b_tok, b_mask, synthetic.EOS_ID)
        # Pairs that carry no preference (identical) or that a rater could not read (no EOS,
        # an empty answer) are left out, and counted.
        keep, dropped = [], {"identical": 0, "no_eos": 0, "empty": 0}
        for i in range(len(prompts)):
            if not (a_end[i] and b_end[i]):
                dropped["no_eos"] += 1
            elif not a_text[i] or not b_text[i]:
                dropped["empty"] += 1
            elif a_text[i] == b_text[i]:
                dropped["identical"] += 1
            else:
                keep.append(i)
        pick = lambda xs: [xs[i] for i in keep]
        rows, info = self.task.label_pairs(pick(prompts), pick(a_text), pick(b_text))
        path = self._write_rows("preferences.jsonl", rows)
        summary = {
            "prompts": len(prompts),
            "pairs": len(rows),
            "dropped": dropped,
            "label_agreement_with_gold": info["agreement"],
            "gold_ties": info["num_gold_ties"],
            "longer_chosen": info["longer_chosen"],
            "longer_better_by_gold": info["longer_better_by_gold"],
            "path": path,
        }
        out = self.path("preferences")
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        (out / "DONE").write_text("")
        print(f"[preferences] {json.dumps(summary)}")
        return summary

    def _on_preferences(self, kind: str):
        """The reward or DPO phase: the SFT policy trained on the labelled pairs."""
        c = self.config
        cfg = _stage_phase_config(
            c,
            kind,
            getattr(c, kind),
            model=self._source("sft"),
            data_path=str(self.path("data", "preferences.jsonl")),
            kind=kind,
        )
        return phase_lib.run_phase(cfg, kind=kind)

    def reward(self):
        return self._on_preferences("reward")

    def dpo(self):
        return self._on_preferences("dpo")

    def ppo(self, *, stop_after: int | None = None):
        c = self.config
        prompts = self.task.prompts(c.ppo_train_prompts, split="train")
        path = self._write_rows("ppo_prompts.jsonl", [{"prompt": p} for p in prompts])
        run = ppo_runner.PPORunConfig(
            run_dir=str(self.path("ppo")),
            policy=self._source("sft"),
            reward=self._source("reward"),
            prompts=path,
            prompt_length=self.task.max_prompt_tokens,
            prompts_per_iteration=c.ppo_prompts_per_iteration,
            iterations=c.ppo_iterations,
            reward_norm_prompts=4 * c.ppo_prompts_per_iteration,
            ppo=c.ppo,
            mesh=c.mesh,
            checkpoint=ckpt_lib.CheckpointConfig(save_every=max(c.ppo_iterations // 4, 1), keep=1),
            log_every=max(c.ppo_iterations // 20, 1),
            seed=c.seed,
            console=c.console,
        )
        monitor = ev.HackingMonitor(c.monitor)
        result = ppo_runner.run_ppo(
            run, gold_fn=self.task.gold_reward_tokens, monitor=monitor, stop_after=stop_after
        )
        history_path = self.path("ppo", "history.jsonl")
        with open(history_path, "a") as f:
            for row in result["history"]:
                f.write(json.dumps(row) + "\n")
        summary_path = self.path("ppo", "monitors.json")
        previous = json.loads(summary_path.read_text()) if summary_path.exists() else []
        previous.append(_jsonable(monitor.summary()))
        summary_path.write_text(json.dumps(previous, indent=2))
        return result

    def evaluate(self):
        from rlhf_jax.pipeline_eval import evaluate

        return evaluate(self)

    def run(self, *, stop_after_phase: str | None = None) -> dict[str, Any]:
        """Runs every unfinished phase; ``stop_after_phase`` ends the run after that one."""
        results = {}
        for phase in PHASES:
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


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return _jsonable(dataclasses.asdict(x))
    if isinstance(x, np.generic | np.ndarray):
        return x.tolist()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x
