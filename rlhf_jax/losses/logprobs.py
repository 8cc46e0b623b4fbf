"""Log-probabilities and entropies from logits.

These turn a model's output into the numbers the losses consume; they are kept apart from the
losses so that any model (ours, or a user's own) can feed them.

Convention: ``logits_BxTxV[:, t]`` is the distribution of ``tokens_BxT[:, t]`` — the caller
shifts (``logits[:, :-1]`` against ``tokens[:, 1:]``) before calling.

Letters: B batch, T time, V vocabulary.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlhf_jax.losses._masking import as_mask, compute_dtype, sanitize, upcast


def _scaled_logits(logits_BxTxV, mask_BxT, temperature):
    if logits_BxTxV.ndim != 3:
        raise ValueError(f"logits_BxTxV must have rank 3 (B, T, V); got {logits_BxTxV.shape}")
    if not isinstance(temperature, jax.Array) and temperature <= 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    mask_BxT = as_mask(mask_BxT, logits_BxTxV.shape[:2], "mask_BxT")
    dtype = compute_dtype(logits_BxTxV)
    logits = sanitize(upcast(logits_BxTxV, dtype), mask_BxT[..., None])
    return logits / jnp.asarray(temperature, dtype), mask_BxT


def sequence_logprobs(
    logits_BxTxV, tokens_BxT, mask_BxT, *, temperature: float = 1.0
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Per-token and per-sequence log-probabilities of ``tokens`` under ``softmax(logits / T)``.

    log π(y_t) = l_t[y_t]/T − logsumexp(l_t/T), summed over valid tokens for the sequence.
    The gather avoids materialising the full (B, T, V) log-softmax. The temperature must be the
    one used for sampling, so that re-scored log-probs match the sampler's (PPO's first ratio
    is then exactly 1).

    Returns ``(token_logp_BxT, seq_logp_B)``; ``token_logp_BxT`` is 0 under the mask.
    """
    logits, mask_BxT = _scaled_logits(logits_BxTxV, mask_BxT, temperature)
    if tokens_BxT.shape != mask_BxT.shape:
        raise ValueError(f"tokens_BxT has shape {tokens_BxT.shape}; expected {mask_BxT.shape}")
    tokens = jnp.where(mask_BxT, tokens_BxT, 0).astype(jnp.int32)
    picked_BxT = jnp.take_along_axis(logits, tokens[..., None], axis=-1)[..., 0]
    token_logp_BxT = sanitize(picked_BxT - jax.nn.logsumexp(logits, axis=-1), mask_BxT)
    return token_logp_BxT, jnp.sum(token_logp_BxT, axis=-1)


def entropy_from_logits(logits_BxTxV, mask_BxT, *, temperature: float = 1.0) -> jnp.ndarray:
    """Per-token entropy H = logsumexp(l) − Σ_v softmax(l)_v · l_v of ``softmax(logits / T)``.

    Returns ``entropy_BxT``, 0 under the mask.
    """
    logits, mask_BxT = _scaled_logits(logits_BxTxV, mask_BxT, temperature)
    probs = jax.nn.softmax(logits, axis=-1)
    entropy_BxT = jax.nn.logsumexp(logits, axis=-1) - jnp.sum(probs * logits, axis=-1)
    return sanitize(entropy_BxT, mask_BxT)
