"""Validated rows → token ids, fitted to bucket lengths; every row's outcome in the report.

Text layout of one sequence (before padding), prompt then response:

    plain rows:           tok(prompt, special tokens e.g. BOS) + tok(response) + [EOS]
    conversational rows:  tok(template(prompt, generation prompt)) + tok(rest of the
                          template(prompt + [assistant response])) + [EOS]

Strings are concatenated as given — put any separator (a space, a newline) in the data. A
conversational row is rendered with the tokenizer's chat template (which then holds its own
special tokens); its response is the text the template adds after the generation prompt, the
template's end-of-turn token included, trailing whitespace stripped. EOS is appended unless
the response already ends with it (as with Qwen's ``<|im_end|>``). Plain rows never use the
chat template. A prompt that tokenises to nothing (an empty SFT prompt with a tokenizer that
adds no BOS, e.g. GPT-2's) becomes the one token BOS, or EOS when there is no BOS, so every
sequence starts with at least one prompt token and every response token is predicted.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from rlhf_jax.data import report as R
from rlhf_jax.data.buckets import fit_to_bucket, truncate_prompt
from rlhf_jax.data.config import check_bucket_lengths
from rlhf_jax.data.formats import PARSERS, Record
from rlhf_jax.data.loading import BAD_LINE_COLUMN

CHUNK = 512  # rows tokenised per call: the fast tokenizer batches in Rust


@dataclasses.dataclass(frozen=True, eq=False)  # arrays inside: compare fields, not examples
class Example:
    """One usable row as token ids; the sequence for response k is prompt_ids + response_ids[k]."""

    row: int  # index of the source row (for reports and look-ups)
    prompt_ids: np.ndarray  # int32 (P,), after any truncation
    response_ids: tuple[np.ndarray, ...]  # int32, each ending with EOS; 1, 2 or K of them
    length: int  # the bucket T this example is padded to
    ranks: tuple[int, ...] | None = None  # rankings only; 0 = best
    label: float | None = None  # preferences only: a soft label P(chosen ≻ rejected)


@dataclasses.dataclass(frozen=True, eq=False)
class TokenizedDataset:
    """The examples of one dataset split, with the report of the rows that were not used."""

    kind: str  # "sft", "preference" or "ranking"
    examples: tuple[Example, ...]
    bucket_lengths: tuple[int, ...]
    pad_id: int
    num_responses: int  # 1 (SFT), 2 (chosen, rejected), or K response slots (rankings)
    report: R.DataReport

    def __len__(self) -> int:
        return len(self.examples)

    @functools.cached_property
    def soft_labels(self) -> bool:
        """Whether any pair carries a soft label (then every batch has ``label_B``)."""
        return any(e.label is not None for e in self.examples)

    def lengths(self) -> np.ndarray:
        """The bucket length of every example, int64 (N,)."""
        return np.asarray([e.length for e in self.examples], np.int64)

    def subset(self, indices: Sequence[int]) -> TokenizedDataset:
        """The examples at ``indices`` (same report, pad and K)."""
        return dataclasses.replace(self, examples=tuple(self.examples[i] for i in indices))


def _render(tokenizer, record: Record) -> tuple[str, tuple[str, ...]]:
    """(prompt text, response texts) of a conversational record, via the chat template."""
    prompt = list(record.prompt)
    try:
        prompt_text = tokenizer.apply_chat_template(
            prompt, add_generation_prompt=True, tokenize=False
        )
        fulls = [
            tokenizer.apply_chat_template(
                [*prompt, {"role": "assistant", "content": text}], tokenize=False
            )
            for text in record.responses
        ]
    except Exception as e:  # a template's own checks, e.g. roles that must alternate
        raise R.RowError(R.BAD_MESSAGES, f"the chat template rejected the messages: {e}") from e
    for full in fulls:
        if not full.startswith(prompt_text):
            # Then prompt tokens cannot be told from response tokens; a template that does this
            # (e.g. one that rewrites earlier turns) cannot be used for training as it stands.
            raise ValueError(
                "the tokenizer's chat template renders prompt + response with a different "
                f"prefix than the prompt with its generation prompt:\n{prompt_text!r}\nvs\n{full!r}"
            )
    return prompt_text, tuple(full[len(prompt_text) :].rstrip() for full in fulls)


def _ids(tokenizer, texts: list[str], *, add_special_tokens: bool) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]


def tokenize_rows(
    rows: Iterable[Mapping],
    tokenizer,
    *,
    kind: str,
    bucket_lengths: Sequence[int],
    too_long: str = "drop",
    strict: bool = False,
    max_responses: int | None = None,
    source: str = "",
) -> TokenizedDataset:
    """Parses, tokenises and buckets every row; unusable rows go to the report (or raise).

    ``rows`` are dicts (an HF `datasets.Dataset` iterates as such); ``kind`` is what
    `detect_kind` returned. For rankings, K is ``max_responses`` (rows with more responses
    are dropped as too_many_responses) or, when None, the most responses any row has.
    """
    bucket_lengths = check_bucket_lengths(bucket_lengths)
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token, which every response must end with")
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    parse = PARSERS[kind]
    report = R.DataReport(source=source, strict=strict)
    examples: list[Example] = []
    chunk: list[tuple[int, Record]] = []

    def flush():
        examples.extend(
            _encode_chunk(
                tokenizer, chunk, bucket_lengths=bucket_lengths, too_long=too_long, report=report
            )
        )
        chunk.clear()

    seen: set = set()
    for i, row in enumerate(rows):
        report.num_rows += 1
        if row.get(BAD_LINE_COLUMN) is not None:
            report.add(i, R.BAD_LINE, row[BAD_LINE_COLUMN])
            continue
        try:
            record = parse(row)
            if kind == "preference" and record.responses[0] == record.responses[1]:
                raise R.RowError(R.IDENTICAL_RESPONSES, "chosen equals rejected")
            if max_responses is not None and len(record.responses) > max_responses:
                raise R.RowError(
                    R.TOO_MANY_RESPONSES,
                    f"{len(record.responses)} responses; max_responses is {max_responses}",
                )
        except R.RowError as e:
            report.add(i, e.reason, e.detail)
            continue
        key = repr((record.prompt, record.responses, record.ranks, record.label))
        if key in seen:
            report.add(i, R.DUPLICATE, "the same prompt and responses as an earlier row")
        seen.add(key)
        chunk.append((i, record))
        if len(chunk) == CHUNK:
            flush()
    flush()
    report.num_kept = len(examples)
    if kind == "sft":
        k = 1
    elif kind == "preference":
        k = 2
    else:
        k = max_responses or max((len(e.response_ids) for e in examples), default=2)
    return TokenizedDataset(kind, tuple(examples), bucket_lengths, int(pad_id), k, report)


def _encode_chunk(tokenizer, chunk, *, bucket_lengths, too_long, report) -> list[Example]:
    # Render every row to text first so that the tokenizer sees a whole chunk per call;
    # conversational prompts already hold their special tokens, plain prompts get them added.
    rendered = []  # (row, record, prompt text, response texts)
    for i, record in chunk:
        if record.conversational:
            if not tokenizer.chat_template:
                raise ValueError(
                    f"{report.source}: row {i} is a conversation (message lists) but the "
                    "tokenizer has no chat_template; give the tokenizer one (e.g. "
                    "tokenizer.chat_template = ...) or use prompt/response strings"
                )
            try:
                prompt_text, response_texts = _render(tokenizer, record)
            except R.RowError as e:
                report.add(i, e.reason, e.detail)
                continue
        else:
            prompt_text, response_texts = record.prompt, record.responses
        rendered.append((i, record, prompt_text, response_texts))
    plain = [j for j, r in enumerate(rendered) if not r[1].conversational]
    chat = [j for j, r in enumerate(rendered) if r[1].conversational]
    prompt_ids: list = [None] * len(rendered)
    for group, special in ((plain, True), (chat, False)):
        for j, ids in zip(
            group,
            _ids(tokenizer, [rendered[j][2] for j in group], add_special_tokens=special),
            strict=True,
        ):
            prompt_ids[j] = ids
    flat = [text for r in rendered for text in r[3]]
    flat_ids = iter(_ids(tokenizer, flat, add_special_tokens=False))
    eos = tokenizer.eos_token_id
    bos = tokenizer.bos_token_id
    out = []
    for j, (i, record, _, response_texts) in enumerate(rendered):
        responses = []
        for _ in response_texts:
            ids = next(flat_ids)
            responses.append(np.asarray(ids if ids[-1:] == [eos] else [*ids, eos], np.int32))
        # The first token is never predicted, so an empty prompt (SFT) gets BOS, or EOS as
        # GPT-2 uses it, for the response's first token to be learned from.
        prompt = np.asarray(prompt_ids[j] or [eos if bos is None else bos], np.int32)
        fit = fit_to_bucket(
            len(prompt), [len(r) for r in responses], bucket_lengths, too_long=too_long
        )
        if fit.length is None:
            report.add(i, R.TOO_LONG, fit.detail)
            continue
        if fit.truncated:
            report.add(i, R.TRUNCATED, fit.detail)
            prompt = truncate_prompt(prompt, fit.prompt_keep, bos_id=bos)
        out.append(Example(i, prompt, tuple(responses), fit.length, record.ranks, record.label))
    return out


MAX_UNKNOWN_FRACTION = 0.2  # a share of <unk> tokens above this means the wrong tokenizer


def check_tokens(dataset: TokenizedDataset, tokenizer) -> None:
    """Refuses data that the tokenizer cannot have been meant for: more than
    `MAX_UNKNOWN_FRACTION` of the tokens ``<unk>`` (a word-level or another model's tokenizer;
    a byte-level BPE never produces one). Skipped when the unknown token is also EOS, BOS or
    pad (GPT-2's ``<|endoftext|>``), which the encoder itself adds."""
    unk = tokenizer.unk_token_id
    added = {tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.pad_token_id}
    if unk is None or unk in added or not dataset.examples:
        return
    unknown = total = 0
    for e in dataset.examples:
        for ids in (e.prompt_ids, *e.response_ids):
            unknown += int(np.count_nonzero(ids == unk))
            total += ids.size
    share = unknown / max(total, 1)
    if share > MAX_UNKNOWN_FRACTION:
        name = getattr(tokenizer, "name_or_path", "the tokenizer")
        raise ValueError(
            f"{dataset.report.source}: {share:.0%} of the tokens are {tokenizer.unk_token!r} "
            f"under the tokenizer {name}: it is not the tokenizer of this data's model. Set "
            "model.tokenizer (it defaults to model.hf_path, or the artifact's own)."
        )
