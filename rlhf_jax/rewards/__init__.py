"""Reward sources for RL: reward models (placed like any model, `rlhf_jax.placement`) and
reward functions — verifiable rewards on the decoded text or on the token ids.

    from rlhf_jax import rewards
    config = rewards.RewardsConfig(functions=("numeric_match", "format_match"), weights=(1, .2))
    sources = rewards.resolve_sources(config)
    total_B, parts = rewards.score_texts(sources, prompts, completions, {"answer": answers})

    @rewards.reward_function("my_check", "text")     # or name it by its dotted path
    def my_check(*, prompts, completions, **columns): ...
"""

from rlhf_jax.rewards.functions import (
    AGREEMENT,
    DEFAULT_FORMAT,
    HEDGES,
    REGISTRY,
    RewardFunction,
    agreement,
    exact_match,
    format_match,
    hedging,
    last_number,
    length_penalty,
    numeric_match,
    overlong_penalty,
    prompt_overlap,
    repetition_penalty,
    resolve,
    reward_function,
)
from rlhf_jax.rewards.sources import (
    MODEL,
    RewardsConfig,
    WeightedFunction,
    resolve_sources,
    score_texts,
)

__all__ = [
    "AGREEMENT",
    "DEFAULT_FORMAT",
    "HEDGES",
    "MODEL",
    "REGISTRY",
    "RewardFunction",
    "RewardsConfig",
    "WeightedFunction",
    "agreement",
    "exact_match",
    "format_match",
    "hedging",
    "last_number",
    "length_penalty",
    "numeric_match",
    "overlong_penalty",
    "prompt_overlap",
    "repetition_penalty",
    "resolve",
    "resolve_sources",
    "reward_function",
    "score_texts",
]
