"""Tokenizers from an HF checkpoint directory, and prompt encoding for generation.

Prompts are left-padded to a fixed length so that every batch has one shape (one trace of the
sampler) and all rows end at the same slot (the KV cache then needs one write index).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import transformers

Messages = list[dict[str, str]]  # [{"role": "user", "content": "..."}, ...]


def load_tokenizer(path: str | os.PathLike):
    """`AutoTokenizer` from the local directory `path`, left-padding, with a pad token (EOS
    when it has none). Nothing is fetched from the hub: a path that is not a directory is an
    error naming it."""
    if not os.path.isdir(os.path.expanduser(os.fspath(path))):
        raise FileNotFoundError(
            f"tokenizer directory not found: {path} (a local directory with tokenizer.json or "
            "tokenizer_config.json; fetch a hub model first, e.g. `huggingface-cli download "
            "NAME --local-dir DIR`)"
        )
    tokenizer = transformers.AutoTokenizer.from_pretrained(os.path.expanduser(os.fspath(path)))
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"{path}: the tokenizer has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def format_prompt(tokenizer, prompt: str | Messages) -> str:
    """The text to encode: with a chat template, the conversation rendered up to the assistant's
    turn (a bare string becomes one user message); without one, the string itself."""
    if tokenizer.chat_template:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if not isinstance(prompt, str):
        raise ValueError("chat messages were given but the tokenizer has no chat template")
    return prompt


def _prompt_ids(tokenizer, prompt) -> list[int]:
    text = format_prompt(tokenizer, prompt)
    # A rendered chat template already holds its special tokens (e.g. BOS).
    return tokenizer(text, add_special_tokens=not tokenizer.chat_template)["input_ids"]


def encode_prompts(
    tokenizer, prompts: Sequence[str | Messages], *, max_length: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """(tokens_BxP int32, mask_BxP bool), left-padded to exactly P = `max_length` (None: the
    longest prompt's length).

    A prompt longer than `max_length` raises (naming its row) rather than being truncated.
    """
    rows = []
    for i, prompt in enumerate(prompts):
        ids = _prompt_ids(tokenizer, prompt)
        if max_length is not None and len(ids) > max_length:
            raise ValueError(f"prompt {i} has {len(ids)} tokens; max_length is {max_length}")
        rows.append(ids)
    width = max((len(r) for r in rows), default=1) if max_length is None else max_length
    return _left_padded(tokenizer, rows, width)


def fit_prompts(
    tokenizer, prompts: Sequence[str | Messages], *, max_length: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens_BxP, mask_BxP, kept_B): the prompts that fit in `max_length` tokens, encoded as
    `encode_prompts` does, and which rows they are; the caller reports the ones left out."""
    rows, kept = [], []
    for i, prompt in enumerate(prompts):
        ids = _prompt_ids(tokenizer, prompt)
        if len(ids) <= max_length:
            rows.append(ids)
            kept.append(i)
    tokens, mask = _left_padded(tokenizer, rows, max_length)
    return tokens, mask, np.asarray(kept, np.int64)


def decode_responses(
    tokenizer, tokens_NxR, mask_NxR, eos_ids: int | Sequence[int]
) -> tuple[list[str], np.ndarray]:
    """Response strings (the tokens before the first EOS) and whether each reached EOS."""
    eos = {eos_ids} if isinstance(eos_ids, int) else set(eos_ids)
    texts, ended = [], []
    for row, m in zip(np.asarray(tokens_NxR), np.asarray(mask_NxR), strict=True):
        ids = [int(t) for t, keep in zip(row, m, strict=True) if keep]
        stop = next((j for j, t in enumerate(ids) if t in eos), None)
        if stop is not None:
            ids = ids[:stop]
        texts.append(tokenizer.decode(ids, skip_special_tokens=True).strip())
        ended.append(stop is not None)
    return texts, np.asarray(ended)


def pad_rows(rows, pad_id: int, *, width: int | None = None, left: bool):
    """(tokens int32, mask bool) of (N, width) from id sequences, padded on the left (prompts)
    or the right (responses); width defaults to the longest row."""
    width = max((len(r) for r in rows), default=1) if width is None else width
    tokens = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, ids in enumerate(rows):
        if len(ids):
            span = slice(width - len(ids), width) if left else slice(0, len(ids))
            tokens[i, span], mask[i, span] = ids, True
    return tokens, mask


def _left_padded(tokenizer, rows: list[list[int]], max_length: int):
    return pad_rows(rows, tokenizer.pad_token_id, width=max_length, left=True)
