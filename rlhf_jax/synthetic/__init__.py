"""The embedded synthetic task with a gold reward, its simulated raters, and the pipeline that
runs every phase on it — where every claim about learning is checked against ground truth.

    task.py      SyntheticTask: prompts, corpora, tokenizer (the language and r*'s formula)
    gold.py      the gold reward r*, from text and (jittable) from token ids
    raters.py    simulated Bradley–Terry raters, with noise, disagreement and biases
    feedback.py  the feedback language: judgements, critiques, revisions under principles
    cai.py       Constitutional AI in the pipeline: AI labels (RL-CAI) and the SL-CAI phase
    pipeline.py  Pipeline: pretrain → SFT → preferences → reward model → PPO, DPO → evaluate
    evaluate.py  the final evaluation: win rates, KL, best-of-n, red team, the report
"""

from rlhf_jax.synthetic.pipeline import Pipeline
from rlhf_jax.synthetic.pipeline_config import (
    PHASES,
    EvalConfig,
    FeedbackSettings,
    PipelineConfig,
    PPOStage,
    PreferenceConfig,
    Stage,
    Training,
)
from rlhf_jax.synthetic.task import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SyntheticTask,
    SyntheticTaskConfig,
    write_jsonl,
)

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "PAD_ID",
    "PHASES",
    "EvalConfig",
    "FeedbackSettings",
    "PPOStage",
    "Pipeline",
    "PipelineConfig",
    "PreferenceConfig",
    "Stage",
    "SyntheticTask",
    "SyntheticTaskConfig",
    "Training",
    "write_jsonl",
]
