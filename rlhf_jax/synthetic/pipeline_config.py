"""The synthetic pipeline's config: its phases, their schedules (`Stage`, `PPOStage`), the raters'
sampling, the evaluation, and how a recorded config is read back (`normalised_record`)."""

from __future__ import annotations

import dataclasses
import json

from rlhf_jax import evaluation as ev
from rlhf_jax import models
from rlhf_jax import sharding as sharding_lib
from rlhf_jax.logging import jsonable
from rlhf_jax.synthetic import task as task_lib
from rlhf_jax.training import dpo as dpo_lib
from rlhf_jax.training import feedback as feedback_lib
from rlhf_jax.training import ppo as ppo_lib
from rlhf_jax.training import reward as reward_lib
from rlhf_jax.training.config import build
from rlhf_jax.training.optimizer import OptimizerConfig

PHASES = ("pretrain", "sft", "sl_cai", "preferences", "reward", "ppo", "rounds", "grpo", "dpo",
          "evaluate")  # fmt: skip
# What ``base_run_dir`` supplies: the phases the raters' settings never reach.
BASE_PHASES = ("pretrain", "sft")
RATER_FIELDS = ("rater_temperature", "disagreement", "random_label_rate", "length_bias",
                "agreement_bias")  # fmt: skip


@dataclasses.dataclass(frozen=True, kw_only=True)
class Stage:
    """How long and how fast one supervised phase trains. The pipeline supplies its model,
    data and run directory; checkpoints every half and metrics every 1/20 of the run."""

    steps: int  # optimizer steps
    batch_size: int  # sequences (or pairs) per step
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    examples: int = 0  # rows of data generated for the phase (pretrain corpus, demos)
    eval_fraction: float = 0.0  # share of the phase's data held out for evaluation
    grad_accum_steps: int = 1  # micro-batches per step


@dataclasses.dataclass(frozen=True, kw_only=True)
class PPOStage:
    """How long PPO runs and on what; the algorithm's options are `PipelineConfig.ppo`."""

    iterations: int = 100  # PPO iterations
    prompts_per_iteration: int = 64  # prompts per iteration (× ppo.samples_per_prompt)
    prompts: int = 4096  # size of the PPO prompt set (train split of the task)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Training:
    """Each phase's training schedule."""

    pretrain: Stage
    sft: Stage
    reward: Stage
    dpo: Stage
    ppo: PPOStage = dataclasses.field(default_factory=PPOStage)
    grpo: PPOStage = dataclasses.field(default_factory=PPOStage)  # iterations=0: no GRPO run


@dataclasses.dataclass(frozen=True, kw_only=True)
class PreferenceConfig:
    prompts: int = 2048  # prompts; two SFT samples each, labelled by the simulated raters
    temperature: float = 1.0  # sampling temperature of the pairs


@dataclasses.dataclass(frozen=True, kw_only=True)
class FeedbackSettings:
    """Who labels the preference pairs, and Constitutional AI (`rlhf_jax.synthetic.cai`)."""

    labels: str = "raters"  # "raters" (the simulated raters) or "ai" (RL-CAI: a feedback model)
    constitution: str = ""  # a constitution file (JSON/YAML); "" = the task's own language
    principles: tuple[str, ...] = ()  # the constitution's principles to use; () = all
    judge: str = "pretrain"  # the feedback model: a phase's artifact (pretrain, sft) or a path
    ai: feedback_lib.FeedbackConfig = dataclasses.field(
        default_factory=lambda: feedback_lib.FeedbackConfig(principles_per_pair=2)
    )
    # SL-CAI: SFT samples on this many prompts are critiqued and revised by the feedback model,
    # then SFT continues on the revisions (the "sl_cai" phase); 0 = no SL-CAI phase.
    revise_prompts: int = 0
    revision: feedback_lib.RevisionConfig = dataclasses.field(
        default_factory=lambda: feedback_lib.RevisionConfig(
            max_critique_tokens=24, max_revision_tokens=10
        )
    )
    sl_cai: Stage | None = None  # SL-CAI's SFT schedule (None: train.sft's, 1/4 of its steps)

    def __post_init__(self):
        if self.labels not in ("raters", "ai"):
            raise ValueError(f"feedback.labels={self.labels!r}; expected 'raters' or 'ai'")
        if self.revise_prompts < 0:
            raise ValueError(f"feedback.revise_prompts={self.revise_prompts}; expected >= 0")


@dataclasses.dataclass(frozen=True, kw_only=True)
class IterationConfig:
    """Iterated RLHF (`rlhf_jax.synthetic.rounds`): after the first pass (preferences → reward
    model → PPO), each later round samples new pairs from the current policy, labels them,
    trains the reward model on every label so far (continuing from the last round's), continues
    PPO from the current policy, and adds the round's red-team regressions to the next round's
    prompts."""

    rounds: int = 1  # 1 = one pass; R > 1 runs rounds 2..R in <run_dir>/rounds/
    prompts: int = 0  # new preference prompts per later round (0 = preferences.prompts)
    reference: str = "sft"  # later rounds' KL reference: "sft" (fixed) or "previous" round's
    # Where each later round's PPO starts: "previous" continues the last round's policy; "sft"
    # trains a new policy from SFT against the round's reward model (Bai et al. 2022's online
    # iterations), so the rounds differ only in the labels their reward models saw.
    start: str = "previous"
    # Later rounds' PPO prompts: "round" (the round's preference prompts, regressions
    # included) or "train" (round 1's PPO prompts, the first train.ppo.prompts train prompts,
    # plus the regressions).
    rl_prompts: str = "round"
    # Later rounds' pair-sampling temperature (0 = preferences.temperature): a policy sharpened
    # by RL gives more identical, less informative pairs at the same temperature.
    temperature: float = 0.0
    reward_steps: int = 0  # reward-model steps per later round (0 = train.reward.steps)
    ppo: PPOStage | None = None  # each later round's PPO schedule (None = train.ppo)
    probe_prompts: int = 256  # train prompts answered greedily before and after each round
    tolerance: float = 0.05  # a probe prompt whose gold drops by more is a regression
    stats_prompts: int = 256  # held-out prompts for each round's proxy–gold statistics

    def __post_init__(self):
        if self.rounds < 1:
            raise ValueError(f"iteration.rounds={self.rounds}; expected >= 1")
        for name in ("reference", "start"):
            if getattr(self, name) not in ("sft", "previous"):
                raise ValueError(
                    f"iteration.{name}={getattr(self, name)!r}; expected 'sft' or 'previous'"
                )
        if self.start == "sft" and self.reference == "previous":
            raise ValueError(
                "iteration.start='sft' with reference='previous': a policy trained anew from "
                "SFT takes SFT as its KL reference; set iteration.reference='sft'"
            )
        if not self.temperature >= 0:
            raise ValueError(f"iteration.temperature={self.temperature}; expected >= 0")
        if self.rl_prompts not in ("round", "train"):
            raise ValueError(
                f"iteration.rl_prompts={self.rl_prompts!r}; expected 'round' or 'train'"
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalConfig:
    prompts: int = 200  # held-out prompts
    samples_per_prompt: int = 4  # samples per prompt and policy (their mean gold is compared)
    best_of_n: int = 16  # SFT samples per prompt for the best-of-n baseline
    red_team: tuple[str, ...] = ()  # adversarial prompts (default: the task's hardest cases)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    """The pipeline's run. Each phase's options are that phase's own config, whole (the same
    sections as its script's: ``reward``, ``dpo``, ``ppo``, and ``grpo`` for GRPO on the gold
    reward); ``train`` holds the schedules."""

    run_dir: str  # everything the run writes
    # Take pretrain and SFT from this run's directory instead of training them (it must have
    # run them with the same model, schedules, seed and task but for the raters' settings):
    # runs that differ only in their raters (the failure-mode scenarios) share one SFT policy
    base_run_dir: str | None = None
    task: task_lib.SyntheticTaskConfig = dataclasses.field(
        default_factory=task_lib.SyntheticTaskConfig
    )
    model: models.ModelConfig  # base LM architecture (random init; vocab_size is the task's)
    bucket_lengths: tuple[int, ...] = (16, 24)  # static sequence lengths for the phases
    train: Training
    preferences: PreferenceConfig = dataclasses.field(default_factory=PreferenceConfig)
    feedback: FeedbackSettings = dataclasses.field(default_factory=FeedbackSettings)
    iteration: IterationConfig = dataclasses.field(default_factory=IterationConfig)
    reward: reward_lib.RewardLossConfig = dataclasses.field(
        default_factory=reward_lib.RewardLossConfig
    )
    dpo: dpo_lib.DPOLossConfig = dataclasses.field(default_factory=dpo_lib.DPOLossConfig)
    ppo: ppo_lib.PPOConfig = dataclasses.field(default_factory=ppo_lib.PPOConfig)
    # GRPO on the gold reward alone (a verifiable reward), the comparison for RM-based PPO
    grpo: ppo_lib.PPOConfig = dataclasses.field(
        default_factory=lambda: ppo_lib.PPOConfig(advantage_estimator="grpo", samples_per_prompt=4)
    )
    evaluation: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    mesh: sharding_lib.MeshConfig = dataclasses.field(default_factory=sharding_lib.MeshConfig)
    monitor: ev.MonitorConfig = dataclasses.field(default_factory=ev.MonitorConfig)
    seed: int = 0  # model init and sampling
    console: bool = True  # progress bars


def normalised_record(recorded: dict, source) -> dict:
    """A recorded PipelineConfig as today's code would record it: fields added since it was
    written take their defaults (so that an old run directory stays comparable)."""
    try:
        config = build(PipelineConfig, recorded)
    except ValueError as e:
        raise ValueError(f"{source}: not a config this version can read ({e})") from None
    return json.loads(json.dumps(jsonable(dataclasses.asdict(config))))
