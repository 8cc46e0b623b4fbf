"""The data formats users have, detected from column names and validated row by row.

Each row becomes a `Record`: a prompt and the responses to it. A prompt is a string, or a
conversation (a tuple of messages) that the tokenizer's chat template renders; a response is
always the text of one assistant turn.

SFT (kind "sft"):
    {"prompt": "What is 2+2?", "completion": " 4"}
    {"prompt": [{"role": "user", "content": "Hi"}],                    # conversational
     "completion": [{"role": "assistant", "content": "Hello!"}]}
    {"messages": [{"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello!"}]}
  With ``messages`` the last message must be the assistant's; it is the response, and the
  earlier messages (earlier assistant turns included) are the prompt, so the loss covers the
  final assistant turn only. An empty prompt is allowed (plain language modelling of the
  completion); an empty completion is not. A table with both ``messages`` and ``prompt``
  columns (as HuggingFaceH4/ultrachat_200k) is read through ``messages``.

Preferences (kind "preference"):
    {"prompt": "...", "chosen": "...", "rejected": "..."}              # strings
    {"chosen": [user, assistant, ..., assistant],                      # Anthropic HH as in
     "rejected": [user, assistant, ..., assistant]}                    # TRL (implicit prompt)
    {"prompt": "...", "chosen": [user, assistant],                     # UltraFeedback-
     "rejected": [user, assistant]}                                    # binarized
    {"prompt": [user], "chosen": [assistant], "rejected": [assistant]} # TRL explicit
    {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!",                     # Anthropic HH as
     "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."}                 # the dataset holds
  Raw HH strings (no prompt column, each a transcript of "Human:" and "Assistant:" turns
  after blank lines) are read as the message lists they write out.
  For message lists the last message of each must be the assistant's. When the lists carry
  the conversation (two or more messages), everything before the last message is the prompt
  and must be the same in chosen and rejected; the ``prompt`` column, if any, is then not
  used. One-message lists take their prompt from the ``prompt`` column (a string becomes one
  user message). Prompts and both responses must be non-empty.
  An optional ``chosen_probability`` column (a number in [0, 1]) is a soft label,
  P(chosen ≻ rejected), as AI feedback gives; the Bradley–Terry and DPO losses then fit that
  probability instead of a hard 1. A row without one (or null) is a hard label.

Rankings (kind "ranking"):
    {"prompt": "...", "responses": ["a", "b", "c"], "ranks": [1, 0, 2]}  # 0 = best
  At least two responses, one integer rank >= 0 for each, not all tied; ties are allowed.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import re
from collections.abc import Iterable, Mapping

from rlhf_jax.data import report as R
from rlhf_jax.data.loading import BAD_LINE_COLUMN

Message = dict[str, str]

KINDS: tuple[str, ...] = ("sft", "preference", "ranking")
# The column sets that identify each kind, in the order auto-detection tries them.
COLUMNS: dict[str, tuple[tuple[str, ...], ...]] = {
    "ranking": (("prompt", "responses", "ranks"),),
    "preference": (("chosen", "rejected"),),
    "sft": (("messages",), ("prompt", "completion")),
}
EXPECTED = (
    "SFT (prompt, completion) or (messages); preferences (chosen, rejected), optionally with "
    "prompt; rankings (prompt, responses, ranks)"
)


@dataclasses.dataclass(frozen=True)
class Record:
    """One validated row: a prompt and one (SFT), two (chosen, rejected) or K responses."""

    prompt: str | tuple[Message, ...]  # a tuple of messages is rendered by the chat template
    responses: tuple[str, ...]
    ranks: tuple[int, ...] | None = None  # rankings only; 0 = best
    label: float | None = None  # preferences only: a soft label P(chosen ≻ rejected)

    @property
    def conversational(self) -> bool:
        return not isinstance(self.prompt, str)


def detect_kind(columns: Iterable[str], *, format: str = "auto", source: str = "") -> str:
    """The kind ("sft", "preference", "ranking") that the columns hold.

    ``format`` "auto" tries rankings, then preferences, then SFT; a named format insists on
    its own columns. Raises a ValueError naming the columns found and those expected.
    """
    found = set(columns) - {BAD_LINE_COLUMN}  # not a data column
    kinds = KINDS if format == "auto" else (format,)
    if format != "auto" and format not in KINDS:
        raise ValueError(f"format={format!r}; expected 'auto' or one of {KINDS}")
    for kind in ("ranking", "preference", "sft"):
        if kind in kinds and any(set(cols) <= found for cols in COLUMNS[kind]):
            return kind
    wanted = (
        EXPECTED
        if format == "auto"
        else f"{format}: " + " or ".join(f"({', '.join(cols)})" for cols in COLUMNS[format])
    )
    raise ValueError(f"{source}: columns {sorted(found)} match no known format; expected {wanted}")


def _string(row: Mapping, key: str) -> str:
    value = row.get(key)
    if value is None:
        raise R.RowError(R.MISSING_FIELD, f"{key!r} is missing or null")
    if not isinstance(value, str):
        raise R.RowError(R.WRONG_TYPE, f"{key!r} is {type(value).__name__}; expected a string")
    return value


def _messages(value, key: str) -> tuple[Message, ...]:
    """A non-empty list of {"role": str, "content": str}; extra keys are dropped."""
    if value is None:
        raise R.RowError(R.MISSING_FIELD, f"{key!r} is missing or null")
    if not isinstance(value, list | tuple):
        raise R.RowError(
            R.WRONG_TYPE, f"{key!r} is {type(value).__name__}; expected a list of messages"
        )
    if not value:
        raise R.RowError(R.BAD_MESSAGES, f"{key!r} is an empty list")
    messages = []
    for i, m in enumerate(value):
        if not isinstance(m, Mapping):
            raise R.RowError(R.BAD_MESSAGES, f"{key}[{i}] is {type(m).__name__}; expected a dict")
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or not role or not isinstance(content, str):
            raise R.RowError(
                R.BAD_MESSAGES,
                f"{key}[{i}] needs a string 'role' and a string 'content'; got "
                f"role={type(role).__name__}, content={type(content).__name__}",
            )
        messages.append({"role": role, "content": content})
    return tuple(messages)


def _final_assistant(messages: tuple[Message, ...], key: str) -> str:
    if messages[-1]["role"] != "assistant":
        raise R.RowError(
            R.BAD_MESSAGES,
            f"the last message of {key!r} has role {messages[-1]['role']!r}; expected 'assistant'",
        )
    return _response(messages[-1]["content"], key)


def _response(text: str, key: str) -> str:
    if not text.strip():
        raise R.RowError(R.EMPTY_RESPONSE, f"{key!r} is empty")
    return text


def _prompt(row: Mapping, *, allow_empty: bool) -> str | tuple[Message, ...]:
    value = row.get("prompt")
    prompt = (
        _messages(value, "prompt") if isinstance(value, list | tuple) else _string(row, "prompt")
    )
    if not allow_empty and isinstance(prompt, str) and not prompt.strip():
        raise R.RowError(R.EMPTY_PROMPT, "'prompt' is empty")
    return prompt


def _as_conversation(prompt: str | tuple[Message, ...]) -> tuple[Message, ...]:
    return ({"role": "user", "content": prompt},) if isinstance(prompt, str) else prompt


def parse_sft(row: Mapping) -> Record:
    if "messages" in row:
        messages = _messages(row["messages"], "messages")
        return Record(messages[:-1], (_final_assistant(messages, "messages"),))
    prompt = _prompt(row, allow_empty=True)
    completion = row.get("completion")
    if isinstance(completion, list | tuple):
        messages = _messages(completion, "completion")
        if len(messages) != 1:
            raise R.RowError(
                R.BAD_MESSAGES, f"'completion' has {len(messages)} messages; expected one"
            )
        return Record(_as_conversation(prompt), (_final_assistant(messages, "completion"),))
    text = _response(_string(row, "completion"), "completion")
    if not isinstance(prompt, str):
        raise R.RowError(R.WRONG_TYPE, "'prompt' is a message list but 'completion' a string")
    return Record(prompt, (text,))


# Raw Anthropic HH transcripts: turns after blank lines, "\n\nHuman: ..." / "\n\nAssistant: ...".
_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
_HH_ASSISTANT = "\n\nAssistant:"


def _is_hh(text) -> bool:
    return isinstance(text, str) and bool(re.match(r"\s*(Human|Assistant):", text))


def _hh_record(chosen: str, rejected: str) -> tuple[tuple[Message, ...], tuple[str, str]]:
    """(prompt messages, (chosen, rejected)) of a raw HH pair, split as TRL does: the prompt is
    the shared transcript up to its last "\n\nAssistant:", each response the rest (whole,
    whatever it contains)."""
    if not (_is_hh(chosen) and _is_hh(rejected)):
        side = "chosen" if not _is_hh(chosen) else "rejected"
        raise R.RowError(
            R.BAD_MESSAGES, f"{side!r} is not an HH transcript (starting 'Human:') as the other is"
        )
    chosen, rejected = "\n\n" + chosen.lstrip(), "\n\n" + rejected.lstrip()
    shared = os.path.commonprefix([chosen, rejected])  # noqa: RUF071 (characters, as meant)
    cut = shared.rfind(_HH_ASSISTANT)
    if cut < 0:
        raise R.RowError(
            R.BAD_MESSAGES, "the HH transcripts differ before any 'Assistant:' turn they share"
        )
    parts = _HH_TURN.split(chosen[:cut])
    if parts[0].strip():
        raise R.RowError(R.BAD_MESSAGES, "the HH transcript has text before its first turn")
    roles, contents = parts[1::2], parts[2::2]
    if not roles or roles[0] != "Human":
        raise R.RowError(R.BAD_MESSAGES, "the HH transcript must start with a 'Human:' turn")
    prompt = tuple(
        {"role": "user" if role == "Human" else "assistant", "content": content.strip()}
        for role, content in zip(roles, contents, strict=True)
    )
    head = cut + len(_HH_ASSISTANT)
    responses = (_response(chosen[head:].strip(), "chosen"),
                 _response(rejected[head:].strip(), "rejected"))  # fmt: skip
    return prompt, responses


SOFT_LABEL = "chosen_probability"  # the optional soft-label column of preference rows


def parse_preference(row: Mapping) -> Record:
    record = _preference_record(row)
    label = row.get(SOFT_LABEL)
    if label is None:
        return record
    if isinstance(label, bool) or not isinstance(label, numbers.Real) or not 0 <= label <= 1:
        raise R.RowError(
            R.BAD_LABEL, f"{SOFT_LABEL!r} is {label!r}; expected a probability in [0, 1]"
        )
    return dataclasses.replace(record, label=float(label))


def _preference_record(row: Mapping) -> Record:
    chosen, rejected = row.get("chosen"), row.get("rejected")
    for key, value in (("chosen", chosen), ("rejected", rejected)):
        if value is None:
            raise R.RowError(R.MISSING_FIELD, f"{key!r} is missing or null")
    if row.get("prompt") is None and (_is_hh(chosen) or _is_hh(rejected)):
        return Record(*_hh_record(chosen, rejected))
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise R.RowError(
            R.WRONG_TYPE,
            f"'chosen' is {type(chosen).__name__} but 'rejected' is {type(rejected).__name__}; "
            "expected two strings or two message lists",
        )
    if isinstance(chosen, str):
        responses = (_response(chosen, "chosen"), _response(rejected, "rejected"))
        if row.get("prompt") is None:
            raise R.RowError(R.MISSING_FIELD, "string 'chosen'/'rejected' need a 'prompt'")
        prompt = _prompt(row, allow_empty=False)
        if not isinstance(prompt, str):
            raise R.RowError(R.WRONG_TYPE, "'prompt' is a message list but 'chosen' a string")
        return Record(prompt, responses)
    chosen_m, rejected_m = _messages(chosen, "chosen"), _messages(rejected, "rejected")
    responses = (_final_assistant(chosen_m, "chosen"), _final_assistant(rejected_m, "rejected"))
    if len(chosen_m) == 1 and len(rejected_m) == 1:
        if row.get("prompt") is None:
            raise R.RowError(R.MISSING_FIELD, "one-message 'chosen'/'rejected' need a 'prompt'")
        return Record(_as_conversation(_prompt(row, allow_empty=False)), responses)
    if chosen_m[:-1] != rejected_m[:-1]:
        raise R.RowError(
            R.BAD_MESSAGES,
            "'chosen' and 'rejected' differ before their last message, so they share no prompt",
        )
    if not any(m["content"].strip() for m in chosen_m[:-1]):
        raise R.RowError(R.EMPTY_PROMPT, "the messages before the responses are empty")
    return Record(chosen_m[:-1], responses)


def parse_ranking(row: Mapping) -> Record:
    prompt = _prompt(row, allow_empty=False)
    responses, ranks = row.get("responses"), row.get("ranks")
    for key, value in (("responses", responses), ("ranks", ranks)):
        if value is None:
            raise R.RowError(R.MISSING_FIELD, f"{key!r} is missing or null")
        if not isinstance(value, list | tuple):
            raise R.RowError(R.WRONG_TYPE, f"{key!r} is {type(value).__name__}; expected a list")
    for i, text in enumerate(responses):
        if not isinstance(text, str):
            raise R.RowError(
                R.WRONG_TYPE, f"responses[{i}] is {type(text).__name__}; expected a string"
            )
        _response(text, f"responses[{i}]")
    if any(isinstance(r, bool) or not isinstance(r, numbers.Integral) or r < 0 for r in ranks):
        raise R.RowError(R.BAD_RANKS, f"'ranks' must be integers >= 0; got {list(ranks)}")
    if len(responses) < 2 or len(ranks) != len(responses):
        raise R.RowError(
            R.BAD_RANKS,
            f"{len(responses)} responses and {len(ranks)} ranks; expected two or more of each, "
            "one rank per response",
        )
    if len(set(ranks)) == 1:
        raise R.RowError(R.BAD_RANKS, "all ranks are tied, so the row expresses no preference")
    if not isinstance(prompt, str):
        prompt = _as_conversation(prompt)
    return Record(prompt, tuple(responses), tuple(int(r) for r in ranks))


PARSERS = {"sft": parse_sft, "preference": parse_preference, "ranking": parse_ranking}
