"""The whole pipeline on the embedded synthetic task (what `make demo` runs).

    python experiments/run_pipeline.py --config configs/synthetic.py
    python experiments/run_pipeline.py --config configs/synthetic.py:smoke   # seconds, for tests
    python experiments/run_pipeline.py --config configs/synthetic.py:verbosity   # a failure mode

Failure-mode scenarios (`rlhf_jax.synthetic.scenarios`): `clean`, `verbosity` (raters prefer
longer answers), `sycophancy` (raters prefer answers that echo the prompt), `disagreement` (half
the raters judge by another criterion), `noisy` (half the labels are coin flips); `smoke,<name>`
shrinks one. A scenario takes pretrain and SFT from the default run's directory (run that
first, or `python experiments/scenarios.py`, which runs all five and their table) and writes
runs/scenarios/<name>; GRPO is off in them.

pretrain → SFT → preferences (simulated raters) → reward model → PPO, and DPO on the same
preferences, then an evaluation report judged by the task's gold reward. Rerunning the same
command resumes at the first unfinished phase.

Every field is documented in its dataclass (`rlhf_jax/synthetic/pipeline.py` for the pipeline's
own, then each phase's: `RewardLossConfig`, `DPOLossConfig`, `PPOConfig`, `OptimizerConfig`,
`SyntheticTaskConfig`, `ModelConfig`, `MonitorConfig`); this file sets what the run changes from
their defaults. The phases' sections have the same names as in the phase scripts. Override any
field on the command line, e.g. `--config.ppo.kl_coef=0.05 --config.dpo.loss_type=ipo
--config.train.ppo.iterations=300 --config.task.length_bias=0.3`.
"""

import dataclasses

from rlhf_jax.models import ModelConfig
from rlhf_jax.synthetic import (
    EvalConfig,
    FeedbackSettings,
    PipelineConfig,
    PPOStage,
    PreferenceConfig,
    Stage,
    SyntheticTaskConfig,
    Training,
)
from rlhf_jax.synthetic.scenarios import SCENARIOS
from rlhf_jax.training.config import config_dict
from rlhf_jax.training.dpo import DPOLossConfig
from rlhf_jax.training.feedback import FeedbackConfig
from rlhf_jax.training.optimizer import OptimizerConfig
from rlhf_jax.training.ppo import PPOConfig
from rlhf_jax.training.reward import RewardLossConfig


def _stage(steps, batch_size, learning_rate, examples=0, eval_fraction=0.0):
    # Linear warmup over a tenth of the steps, then cosine decay to 10% of the peak.
    optimizer = OptimizerConfig(
        learning_rate=learning_rate,
        schedule="cosine",
        warmup_steps=max(steps // 10, 1),
        end_lr_fraction=0.1,
    )
    return Stage(
        steps=steps,
        batch_size=batch_size,
        optimizer=optimizer,
        examples=examples,
        eval_fraction=eval_fraction,
    )


CAI_VARIANTS = ("cai", "cai_raters")


def get_config(arg=None):
    parts = [p for p in (arg or "").split(",") if p]
    smoke = "smoke" in parts
    cai = [p for p in parts if p in CAI_VARIANTS]
    scenarios = [p for p in parts if p != "smoke" and p not in CAI_VARIANTS]
    if (
        len(scenarios) > 1
        or len(cai) > 1
        or any(p not in SCENARIOS for p in scenarios)
        or (cai == ["cai"] and scenarios)
    ):
        raise ValueError(
            f"unknown variant {arg!r}; expected none, 'smoke', a scenario "
            f"({', '.join(SCENARIOS)}), 'cai' or 'cai_raters' (optionally with a scenario), each "
            "optionally with 'smoke'"
        )
    # A small Llama-style LM, trained from scratch (vocab_size becomes the task's).
    model = ModelConfig(
        model_type="llama",
        vocab_size=18,
        hidden_size=64 if smoke else 128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16 if smoke else 32,
        mlp_dim=128 if smoke else 256,
        norm="rms",
        norm_eps=1e-5,
        activation="silu",
        gated_mlp=True,
        positions="rope",
        max_position_embeddings=64,
        rotary_dim=16 if smoke else 32,
        tie_embeddings=True,
        # Two layers on a CPU: the unrolled loop lets XLA fuse across them (PPO 4.4 vs 3.4
        # iterations/s scanned; benchmarks/README.md, "Memory and program size").
        scan_unroll=2,
    )
    # PPO as in lm-human-preferences: re-scoring at the sampling temperature 1, Adam ε 1e-5,
    # constant learning rates; responses of at most 10 tokens (longest answer + EOS + slack).
    ppo = PPOConfig(
        response_length=10,
        temperature=1.0,
        kl_coef=0.1,
        reward_norm_prompts=128 if smoke else 256,
        policy_optimizer=OptimizerConfig(learning_rate=1e-4, schedule="constant", eps=1e-5),
        critic_optimizer=OptimizerConfig(learning_rate=1e-3, schedule="constant", eps=1e-5),
    )
    # GRPO on the gold reward (a verifiable reward, no reward model): the group baseline
    # replaces the critic; β = 0 by default; the gold reward itself punishes a missing EOS.
    grpo = PPOConfig(
        response_length=10,
        temperature=1.0,
        advantage_estimator="grpo",
        samples_per_prompt=4,
        missing_eos_penalty=None,
        whiten_advantages=False,
        normalize_reward=False,
        policy_optimizer=OptimizerConfig(learning_rate=1e-4, schedule="constant", eps=1e-5),
    )
    config = PipelineConfig(
        run_dir="runs/synthetic_smoke" if smoke else "runs/synthetic",
        task=SyntheticTaskConfig(rater_temperature=0.05),
        model=model,
        bucket_lengths=(16, 24),
        train=Training(
            pretrain=_stage(20 if smoke else 600, 64, 3e-3, examples=512 if smoke else 20000),
            sft=_stage(20 if smoke else 300, 64, 1e-3, examples=256 if smoke else 8000),
            reward=_stage(20 if smoke else 1000, 64, 3e-4, eval_fraction=0.1),
            dpo=_stage(20 if smoke else 200, 64, 1e-4),
            ppo=PPOStage(
                iterations=4 if smoke else 200,
                prompts_per_iteration=32 if smoke else 64,
                prompts=512 if smoke else 8192,
            ),
            # K = 4 samples of 16 prompts: PPO's 64 episodes per iteration.
            grpo=PPOStage(
                iterations=4 if smoke else 200,
                prompts_per_iteration=8 if smoke else 16,
                prompts=512 if smoke else 8192,
            ),
        ),
        preferences=PreferenceConfig(prompts=256 if smoke else 16384, temperature=1.0),
        # The gold reward is a sum of per-token credits: a mean over the response learns it.
        reward=RewardLossConfig(pooling="mean"),
        dpo=DPOLossConfig(beta=0.1),
        ppo=ppo,
        grpo=grpo,
        evaluation=EvalConfig(
            prompts=64 if smoke else 256,
            samples_per_prompt=16,
            best_of_n=8 if smoke else 16,
        ),
    )
    if cai:
        config = _cai(config, cai[0], smoke)
    if scenarios:
        config = _scenario(config, scenarios[0], smoke)
    return config_dict(config)


def _cai(config, variant, smoke):
    """Constitutional AI on the synthetic task: the base LM's corpus carries the task's feedback
    language (judgements and critiques under principles, `rlhf_jax.synthetic.feedback`).
    ``cai``: RL-CAI (the pretrained base labels every pair, no rater) and SL-CAI (it critiques
    and revises SFT samples). ``cai_raters``: the same base and SFT, the simulated raters label
    (the comparison at the same number of labels); it reads pretrain and SFT from ``cai``'s run."""
    root = "runs/cai_smoke" if smoke else "runs/cai"
    task = dataclasses.replace(config.task, feedback_examples=0.5)
    # The base reads the feedback language from its corpus: longer, with more examples.
    pretrain = dataclasses.replace(
        config.train.pretrain,
        steps=config.train.pretrain.steps if smoke else 2000,
        examples=config.train.pretrain.examples if smoke else 40000,
    )
    train = dataclasses.replace(
        config.train, pretrain=pretrain, grpo=dataclasses.replace(config.train.grpo, iterations=0)
    )
    # Judge prompts with their reasoning run to ~64 tokens.
    model = dataclasses.replace(config.model, max_position_embeddings=128)
    config = dataclasses.replace(config, model=model)
    if variant == "cai":
        # The judge answers, marks both responses against its answer, then chooses
        # (chain-of-thought; its probabilities are clamped to [0.4, 0.6]), under two of three
        # principles per pair.
        ai = FeedbackConfig(principles_per_pair=2, cot=True, cot_max_tokens=44)
        feedback = FeedbackSettings(
            labels="ai",
            principles=("correct", "concise", "original"),
            ai=ai,
            revise_prompts=128 if smoke else 2048,
        )
        return dataclasses.replace(
            config, run_dir=f"{root}/ai", task=task, train=train, feedback=feedback
        )
    return dataclasses.replace(
        config, run_dir=f"{root}/raters", base_run_dir=f"{root}/ai", task=task, train=train
    )


def _scenario(config, name, smoke):
    """The pipeline with the scenario's raters, on the default run's SFT policy (on ``cai``'s
    with ``cai_raters``)."""
    base = config.base_run_dir or config.run_dir
    return dataclasses.replace(
        config,
        run_dir=(
            f"{config.run_dir}_{name}"
            if config.base_run_dir
            else f"runs/scenarios{'_smoke' if smoke else ''}/{name}"
        ),
        base_run_dir=base,
        task=dataclasses.replace(config.task, **SCENARIOS[name].raters),
        train=dataclasses.replace(
            config.train, grpo=dataclasses.replace(config.train.grpo, iterations=0)
        ),
    )
