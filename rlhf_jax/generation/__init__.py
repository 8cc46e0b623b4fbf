"""Compiled KV-cache sampling for policy rollouts.

    graphdef, params = nnx.split(model)                    # a models.CausalLM
    out = generate(graphdef, params, prompt_BxP, prompt_mask_BxP, key,
                   config=SamplingConfig(max_new_tokens=64, temperature=0.7, top_p=0.9,
                                         eos_ids=(2,), pad_id=0))
    out.tokens_BxN, out.mask_BxN, out.logprobs_BxN

Prompts are left-padded (`models.encode_prompts`). `logprobs_BxN` are under the unfiltered
temperature-scaled distribution that PPO re-scores with (see `sampling.py`). `sample` is the
same function un-jitted, to call inside a larger jitted step.
"""

from rlhf_jax.generation.generate import Generation, generate, sample
from rlhf_jax.generation.sampling import SamplingConfig, filter_logits, sample_token

__all__ = ["Generation", "SamplingConfig", "filter_logits", "generate", "sample", "sample_token"]
