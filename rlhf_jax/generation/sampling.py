"""Choosing the next token from logits: temperature, top-k, top-p (nucleus), greedy.

Letters: B batch, V vocabulary.

The sampling distribution is softmax(filter(l / T)), where `filter` keeps the k largest logits
(top-k) and then the smallest set of tokens whose probability reaches p (top-p, Holtzman et al.
2020), renormalised — the order HF `generate` applies them in.

The returned log-probability is NOT that of the filtered distribution: it is
log softmax(l / T)[y], the unfiltered temperature-scaled distribution, because that is what PPO
re-scores the sample under (`rlhf_jax.losses.sequence_logprobs(..., temperature=T)`); returning
it makes the first PPO ratio π/π_old exactly 1 (up to float rounding). Greedy decoding
(`temperature == 0`) returns log softmax(l)[y], i.e. T = 1.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to pick tokens; hashable, so it is a static argument of the jitted sampler."""

    max_new_tokens: int  # N: response length budget (the response arrays are (B, N))
    temperature: float = 1.0  # T > 0 samples softmax(l / T); 0 means greedy argmax
    top_k: int = 0  # keep the k most likely tokens; 0 disables
    top_p: float = 1.0  # keep the smallest set with probability ≥ p; 1.0 disables
    eos_ids: tuple[int, ...] = ()  # a row stops after emitting any of these
    pad_id: int = 0  # written after a row's EOS

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be ≥ 1; got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be ≥ 0 (0 = greedy); got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be ≥ 0 (0 = off); got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1]; got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def filter_logits(scaled_BxV, *, top_k: int, top_p: float):
    """Sets logits outside the top-k / top-p set to −inf. Ties at the cut are all kept."""
    neg_inf = jnp.asarray(-jnp.inf, scaled_BxV.dtype)
    if top_k and top_k < scaled_BxV.shape[-1]:
        kth_Bx1 = lax.top_k(scaled_BxV, top_k)[0][:, -1:]
        scaled_BxV = jnp.where(scaled_BxV < kth_Bx1, neg_inf, scaled_BxV)
    if top_p < 1.0:
        sorted_BxV = -jnp.sort(-scaled_BxV, axis=-1)  # descending
        probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
        # Keep token i while the mass strictly before it is < p: the smallest set reaching p,
        # and never empty.
        before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
        n_keep_B = jnp.sum(before_BxV < top_p, axis=-1)
        cut_Bx1 = jnp.take_along_axis(sorted_BxV, (n_keep_B - 1)[:, None], axis=-1)
        scaled_BxV = jnp.where(scaled_BxV < cut_Bx1, neg_inf, scaled_BxV)
    return scaled_BxV


def sample_token(logits_BxV, key, config: SamplingConfig):
    """(token_B int32, logprob_B float32) — see the module docstring for which log-prob."""
    logits = logits_BxV.astype(jnp.float32)
    if config.greedy:
        token_B = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        scaled = logits
    else:
        scaled = logits / jnp.float32(config.temperature)
        filtered = filter_logits(scaled, top_k=config.top_k, top_p=config.top_p)
        token_B = jax.random.categorical(key, filtered, axis=-1).astype(jnp.int32)
    # Same expression as the PPO re-scoring: l[y]/T − logsumexp(l/T).
    picked_B = jnp.take_along_axis(scaled, token_B[:, None], axis=-1)[:, 0]
    return token_B, picked_B - jax.nn.logsumexp(scaled, axis=-1)
