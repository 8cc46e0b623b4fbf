"""The synthetic task's gold reward r*, from text and from token ids (the formula is in
`rlhf_jax.synthetic.task`'s docstring). ``task`` is a `SyntheticTask`.

Letters: B batch, P prompt tokens, R response tokens, K scored positions, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np


def gold_reward(
    task, prompts: Sequence[str], responses: Sequence[str], *, ended=None
) -> np.ndarray:
    """r* of each (prompt, response) pair, float64 (B,); formula in the module docstring.

    A response string is whitespace-separated words, ended at the first "<eos>" word if
    it has one. Strings are taken as finished responses (as in preference data, where EOS
    is implied), unless ``ended`` (bool (B,)) says which ones reached EOS.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    c = task.config
    out = np.empty(len(prompts), np.float64)
    for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        y = task.target(prompt)
        z, has_eos = task.response_values(response)
        finished = has_eos or (True if ended is None else bool(ended[i]))
        credit = sum(
            1.0 if zi == yi else c.near_miss_credit if zi >= 0 and abs(zi - yi) == 1 else 0.0
            for zi, yi in zip(z, y, strict=False)
        )
        out[i] = 2.0 * credit / max(len(y), len(z)) - 1.0 - c.no_eos_penalty * (not finished)
    return out


def _parse_tokens(task, prompt_ids_BxP, prompt_mask_BxP, response_ids_BxR, response_mask_BxR):
    """(prompt symbol values x_BxP (compacted, −1 after), their count len_B, instruction_B,
    response symbol values z_BxR (compacted; −1 for non-symbols), response length before EOS
    resp_len_B, has_eos_B)."""
    r = response_ids_BxR.shape[1]
    value_V, instruction_V = jnp.asarray(task.symbol_value_V), jnp.asarray(task.instruction_V)
    x_BxP = jnp.where(prompt_mask_BxP, value_V[prompt_ids_BxP], -1)
    x_BxP = _compact(x_BxP, x_BxP >= 0, fill=-1)  # symbols first, in order
    len_B = jnp.sum(x_BxP >= 0, axis=-1)
    instruction_B = jnp.max(jnp.where(prompt_mask_BxP, instruction_V[prompt_ids_BxP], -1), axis=-1)
    response_BxR = _compact(response_ids_BxR, response_mask_BxR, fill=task.pad_id)
    num_valid_B = jnp.sum(response_mask_BxR, axis=-1)
    pos_R = jnp.arange(r)
    is_eos_BxR = (response_BxR == task.eos_id) & (pos_R[None, :] < num_valid_B[:, None])
    has_eos_B = jnp.any(is_eos_BxR, axis=-1)
    resp_len_B = jnp.where(has_eos_B, jnp.argmax(is_eos_BxR, axis=-1), num_valid_B)
    return x_BxP, len_B, instruction_B, value_V[response_BxR], resp_len_B, has_eos_B


def gold_reward_tokens(task, prompt_ids_BxP, prompt_mask_BxP, response_ids_BxR, response_mask_BxR):
    """r* from token ids, float32 (B,); jittable, and equal to `gold_reward` on the text.

    Prompts may be left- or right-padded (masks are True at real tokens). The response is
    its masked tokens up to the first EOS; a response with no EOS among its masked tokens
    pays ``no_eos_penalty``. Non-symbol tokens in the response are wrong tokens.
    """
    c = task.config
    p, r = prompt_ids_BxP.shape[1], response_ids_BxR.shape[1]
    x_BxP, len_B, instruction_B, z_BxR, resp_len_B, has_eos_B = _parse_tokens(
        task, prompt_ids_BxP, prompt_mask_BxP, response_ids_BxR, response_mask_BxR
    )
    pos_P = jnp.arange(p)
    in_target_BxP = pos_P[None, :] < len_B[:, None]
    reverse_idx_BxP = jnp.clip(len_B[:, None] - 1 - pos_P[None, :], 0, p - 1)
    reversed_BxP = jnp.take_along_axis(x_BxP, reverse_idx_BxP, axis=-1)
    big = task.vocab_size  # sorts pads (-1 → big) after every symbol
    sorted_BxP = jnp.sort(jnp.where(x_BxP >= 0, x_BxP, big), axis=-1)
    y_BxP = jnp.select(
        [instruction_B[:, None] == 1, instruction_B[:, None] == 2],
        [reversed_BxP, sorted_BxP],
        x_BxP,
    )
    y_BxP = jnp.where(in_target_BxP, y_BxP, -1)

    k = min(p, r)  # positions that can be scored: i < min(L, M) <= min(P, R)
    y_BxK, z_BxK = y_BxP[:, :k], z_BxR[:, :k]
    scored_BxK = (jnp.arange(k)[None, :] < jnp.minimum(len_B, resp_len_B)[:, None]) & (z_BxK >= 0)
    credit_BxK = jnp.where(
        z_BxK == y_BxK, 1.0, jnp.where(jnp.abs(z_BxK - y_BxK) == 1, c.near_miss_credit, 0.0)
    )
    credit_B = jnp.sum(jnp.where(scored_BxK, credit_BxK, 0.0), axis=-1)
    denom_B = jnp.maximum(jnp.maximum(len_B, resp_len_B), 1).astype(jnp.float32)
    penalty_B = jnp.where(has_eos_B, 0.0, c.no_eos_penalty)
    return 2.0 * credit_B / denom_B - 1.0 - penalty_B


def echo_rate(task, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    """Share of each response's words (before EOS) that repeat the prompt's symbol at the same
    position — parroting the prompt, what ``agreement_bias`` raters reward — float64 (B,);
    0 for an empty response."""
    stats = task.response_stats(prompts, responses)
    return stats["prompt_matches"] / np.maximum(stats["length"], 1)


def echo_rate_tokens(task, prompt_ids_BxP, prompt_mask_BxP, response_ids_BxR, response_mask_BxR):
    """`echo_rate` from token ids, float32 (B,); jittable (masks and padding as in
    `gold_reward_tokens`)."""
    p, r = prompt_ids_BxP.shape[1], response_ids_BxR.shape[1]
    x_BxP, len_B, _, z_BxR, resp_len_B, _ = _parse_tokens(
        task, prompt_ids_BxP, prompt_mask_BxP, response_ids_BxR, response_mask_BxR
    )
    k = min(p, r)
    x_BxK, z_BxK = x_BxP[:, :k], z_BxR[:, :k]
    inside_BxK = jnp.arange(k)[None, :] < jnp.minimum(len_B, resp_len_B)[:, None]
    matches_B = jnp.sum(inside_BxK & (z_BxK >= 0) & (z_BxK == x_BxK), axis=-1)
    return (matches_B / jnp.maximum(resp_len_B, 1)).astype(jnp.float32)


def _compact(values_BxN, keep_BxN, *, fill):
    """The kept entries of each row moved to its front in order; the rest set to ``fill``."""
    order_BxN = jnp.argsort(~keep_BxN, axis=-1, stable=True)
    moved_BxN = jnp.take_along_axis(values_BxN, order_BxN, axis=-1)
    count_B = jnp.sum(keep_BxN, axis=-1)
    inside_BxN = jnp.arange(values_BxN.shape[1])[None, :] < count_B[:, None]
    return jnp.where(inside_BxN, moved_BxN, fill)
