"""Judging trained policies outside training: sample each on a prompt file, score with reward
models and reward functions, win rates against a baseline, KL to a reference, the report.

    python experiments/evaluate.py --config configs/evaluate.py:smoke
    python experiments/evaluate.py --config configs/evaluate.py:smoke \\
        --config.policies.ppo.artifact=runs/mine/ppo/artifact --config.num_prompts=512

Every field is documented in `rlhf_jax/policy_eval.py` (PolicyEvalConfig); the variants are in
`rlhf_jax/presets/evaluate.py`.
"""

from rlhf_jax.presets.evaluate import eval_config


def get_config(arg=None):
    return eval_config(arg)
