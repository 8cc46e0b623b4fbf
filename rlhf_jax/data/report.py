"""What happened to every row: kept, truncated, or dropped for a named reason.

Nothing is dropped or truncated silently. Every row that is not used as it stands is counted
under one reason, with the first few row indices and the first message kept as examples, and
the `DataReport.summary()` is printed at the start of training. With ``strict=True`` the first
row that would be dropped raises a `RowError` naming the file, the row and the reason instead.

Row indices are 0-based positions in the loaded dataset (for JSONL, the line among non-blank
lines).
"""

from __future__ import annotations

import dataclasses

# Reasons, as they appear in reports and errors. Every reason but TRUNCATED and DUPLICATE
# drops the row.
BAD_LINE = "bad_line"  # a JSON Lines line that is not UTF-8, not JSON, or not an object
MISSING_FIELD = "missing_field"  # a required column is null / absent in this row
WRONG_TYPE = "wrong_type"  # e.g. a number where a string belongs, a string where a list does
BAD_MESSAGES = "bad_messages"  # a chat list that is not [{"role": str, "content": str}, ...]
EMPTY_PROMPT = "empty_prompt"  # preferences and rankings need a prompt; SFT does not
EMPTY_RESPONSE = "empty_response"  # an empty (or whitespace-only) completion/response
BAD_RANKS = "bad_ranks"  # ranks not matching responses, negative, or all tied
BAD_LABEL = "bad_label"  # a chosen_probability that is not a number in [0, 1]
TOO_MANY_RESPONSES = "too_many_responses"  # a ranking row with more than max_responses
TOO_LONG = "too_long"  # longer than the largest bucket (dropped)
TRUNCATED = "truncated"  # prompt cut from the left to fit the largest bucket (kept)
IDENTICAL_RESPONSES = "identical_responses"  # a preference pair whose chosen is its rejected
DUPLICATE = "duplicate"  # the same prompt and responses as an earlier row (kept, counted)
KEPT = (TRUNCATED, DUPLICATE)  # reasons that count a row but keep it

REASONS: tuple[str, ...] = (
    BAD_LINE,
    MISSING_FIELD,
    WRONG_TYPE,
    BAD_MESSAGES,
    EMPTY_PROMPT,
    EMPTY_RESPONSE,
    BAD_RANKS,
    BAD_LABEL,
    TOO_MANY_RESPONSES,
    TOO_LONG,
    IDENTICAL_RESPONSES,
    TRUNCATED,
    DUPLICATE,
)


class RowError(ValueError):
    """A row that cannot be used as it stands (raised in strict mode, or by validators)."""

    def __init__(self, reason: str, detail: str, *, source: str = "", row: int = -1):
        self.reason, self.detail, self.source, self.row = reason, detail, source, row
        where = f"{source}: row {row}" if source else f"row {row}"
        super().__init__(f"{where}: {reason}: {detail}")


@dataclasses.dataclass
class DataReport:
    """Counts of rows by outcome for one dataset (one file or one split)."""

    source: str
    strict: bool = False
    max_examples: int = 5  # row indices kept per reason
    num_rows: int = 0  # rows read
    num_kept: int = 0  # rows turned into examples (truncated ones included)
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    example_rows: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    first_detail: dict[str, str] = dataclasses.field(default_factory=dict)

    def add(self, row: int, reason: str, detail: str) -> None:
        """Records one row under ``reason``; when strict, a row raises `RowError` instead.

        Truncation is a policy the user chose (``too_long="truncate"``), so it is counted
        even when strict; a duplicate is kept (repeating a row may be meant) but strict mode
        refuses it.
        """
        if reason not in REASONS:
            raise ValueError(f"unknown reason {reason!r}; expected one of {REASONS}")
        if self.strict and reason != TRUNCATED:
            raise RowError(reason, detail, source=self.source, row=row)
        self.counts[reason] = self.counts.get(reason, 0) + 1
        rows = self.example_rows.setdefault(reason, [])
        if len(rows) < self.max_examples:
            rows.append(row)
        self.first_detail.setdefault(reason, detail)

    @property
    def num_dropped(self) -> int:
        return sum(n for reason, n in self.counts.items() if reason not in KEPT)

    def summary(self) -> str:
        """A few lines for the start of training: totals, then one line per reason."""
        lines = [
            f"{self.source}: {self.num_rows} rows, {self.num_kept} used, "
            f"{self.num_dropped} dropped, {self.counts.get(TRUNCATED, 0)} truncated"
        ]
        actions = {TRUNCATED: "kept, prompt truncated", DUPLICATE: "kept"}
        for reason in REASONS:
            if reason in self.counts:
                action = actions.get(reason, "dropped")
                lines.append(
                    f"  {reason}: {self.counts[reason]} ({action}); rows "
                    f"{self.example_rows[reason]}; e.g. {self.first_detail[reason]}"
                )
        if self.counts.get(TOO_LONG):
            lines.append(
                "  rows longer than the largest bucket are dropped: raise data.bucket_lengths, "
                "or set data.too_long=truncate to cut their prompts"
            )
        return "\n".join(lines)
