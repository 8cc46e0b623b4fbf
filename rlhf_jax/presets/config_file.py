"""One config file for every preset, so the installed command needs no repository files:

    rlhf-jax train sft --preset qwen05b_hh   ≡   --config <this file>:sft:qwen05b_hh

``arg`` is ``PHASE[:VARIANT]``: PHASE one of sft, reward, dpo, ppo, evaluate.
"""

from rlhf_jax.presets import phase_config
from rlhf_jax.presets.evaluate import eval_config
from rlhf_jax.presets.rl import rl_config

KINDS = ("sft", "reward", "dpo", "ppo", "evaluate")


def get_config(arg=None):
    phase, _, variant = (arg or "").partition(":")
    if phase not in KINDS:
        raise ValueError(f"preset {arg!r}: expected PHASE[:VARIANT] with PHASE one of {KINDS}")
    if phase == "ppo":
        return rl_config(variant or None)
    if phase == "evaluate":
        return eval_config(variant or None)
    return phase_config(phase, variant or None)
