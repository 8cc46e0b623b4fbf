"""Format detection and per-row validation (rlhf_jax.data.formats)."""

import pytest

from rlhf_jax.data import formats
from rlhf_jax.data import report as R

U = lambda text: {"role": "user", "content": text}
A = lambda text: {"role": "assistant", "content": text}


@pytest.mark.parametrize(
    ("columns", "kind"),
    [
        (["prompt", "completion"], "sft"),
        (["messages"], "sft"),
        (["prompt", "prompt_id", "messages"], "sft"),
        (["prompt", "chosen", "rejected"], "preference"),
        (["chosen", "rejected"], "preference"),
        (["prompt", "responses", "ranks", "extra"], "ranking"),
    ],
)
def test_detect_kind(columns, kind):
    assert formats.detect_kind(columns) == kind
    assert formats.detect_kind(columns, format=kind) == kind


def test_wrong_columns_name_found_and_expected():
    with pytest.raises(ValueError, match=r"d\.jsonl: columns \['answer', 'question'\]") as e:
        formats.detect_kind(["question", "answer"], source="d.jsonl")
    assert "prompt, completion" in str(e.value) and "responses, ranks" in str(e.value)
    with pytest.raises(ValueError, match=r"expected preference: \(chosen, rejected\)"):
        formats.detect_kind(["prompt", "completion"], format="preference")


def test_sft_rows():
    r = formats.parse_sft({"prompt": "hi", "completion": " there"})
    assert r == formats.Record("hi", (" there",)) and not r.conversational
    r = formats.parse_sft({"messages": [U("a"), A("b"), U("c"), A("d")]})
    assert r.prompt == (U("a"), A("b"), U("c")) and r.responses == ("d",)
    r = formats.parse_sft({"prompt": [U("a")], "completion": [A("b")]})
    assert r.prompt == (U("a"),) and r.responses == ("b",)
    # Conversational completion with a string prompt: the prompt becomes one user message.
    assert formats.parse_sft({"prompt": "a", "completion": [A("b")]}).prompt == (U("a"),)
    # An empty prompt is allowed for SFT (language modelling of the completion).
    assert formats.parse_sft({"prompt": "", "completion": "x"}).prompt == ""


def test_preference_rows():
    r = formats.parse_preference({"prompt": "p", "chosen": "c", "rejected": "r"})
    assert r == formats.Record("p", ("c", "r"))
    hh = {
        "chosen": [U("q"), A("x"), U("q2"), A("good")],
        "rejected": [U("q"), A("x"), U("q2"), A("bad")],
    }
    r = formats.parse_preference(hh)
    assert r.prompt == (U("q"), A("x"), U("q2")) and r.responses == ("good", "bad")
    uf = {"prompt": "q", "chosen": [U("q"), A("good")], "rejected": [U("q"), A("bad")]}
    assert formats.parse_preference(uf).prompt == (U("q"),)
    explicit = {"prompt": [U("q")], "chosen": [A("good")], "rejected": [A("bad")]}
    assert formats.parse_preference(explicit) == formats.Record((U("q"),), ("good", "bad"))
    assert formats.parse_preference({**explicit, "prompt": "q"}).prompt == (U("q"),)


def test_ranking_rows():
    r = formats.parse_ranking({"prompt": "p", "responses": ["a", "b", "c"], "ranks": [1, 0, 1]})
    assert r.responses == ("a", "b", "c") and r.ranks == (1, 0, 1)


@pytest.mark.parametrize(
    ("parse", "row", "reason", "mentions"),
    [
        ("sft", {"prompt": "p", "completion": None}, R.MISSING_FIELD, "'completion'"),
        ("sft", {"prompt": 3, "completion": "c"}, R.WRONG_TYPE, "'prompt' is int"),
        ("sft", {"prompt": "p", "completion": "  "}, R.EMPTY_RESPONSE, "'completion'"),
        ("sft", {"messages": "hello"}, R.WRONG_TYPE, "'messages' is str"),
        ("sft", {"messages": []}, R.BAD_MESSAGES, "empty list"),
        ("sft", {"messages": [U("a"), "b"]}, R.BAD_MESSAGES, "messages[1] is str"),
        ("sft", {"messages": [U("a"), {"role": "assistant"}]}, R.BAD_MESSAGES, "messages[1]"),
        ("sft", {"messages": [A("a"), U("b")]}, R.BAD_MESSAGES, "role 'user'"),
        ("sft", {"messages": [U("a"), A("")]}, R.EMPTY_RESPONSE, "'messages'"),
        ("sft", {"prompt": "p", "completion": [A("a"), A("b")]}, R.BAD_MESSAGES, "2 messages"),
        ("preference", {"prompt": "p", "chosen": "c"}, R.MISSING_FIELD, "'rejected'"),
        ("preference", {"chosen": "c", "rejected": "r"}, R.MISSING_FIELD, "'prompt'"),
        ("preference", {"prompt": "", "chosen": "c", "rejected": "r"}, R.EMPTY_PROMPT, "prompt"),
        ("preference", {"prompt": "p", "chosen": "c", "rejected": ""}, R.EMPTY_RESPONSE, "rej"),
        ("preference", {"prompt": "p", "chosen": "c", "rejected": [A("r")]}, R.WRONG_TYPE, "str"),
        ("preference", {"prompt": 1, "chosen": "c", "rejected": "r"}, R.WRONG_TYPE, "'prompt'"),
        (
            "preference",
            {"chosen": [U("a"), A("c")], "rejected": [U("b"), A("r")]},
            R.BAD_MESSAGES,
            "differ",
        ),
        ("preference", {"chosen": [A("c")], "rejected": [A("r")]}, R.MISSING_FIELD, "'prompt'"),
        ("ranking", {"prompt": "p", "responses": "a", "ranks": [0]}, R.WRONG_TYPE, "'responses'"),
        ("ranking", {"prompt": "p", "responses": ["a", 1], "ranks": [0, 1]}, R.WRONG_TYPE, "[1]"),
        ("ranking", {"prompt": "p", "responses": ["a", "b"], "ranks": [0]}, R.BAD_RANKS, "2 resp"),
        ("ranking", {"prompt": "p", "responses": ["a", "b"], "ranks": [0, -1]}, R.BAD_RANKS, ">="),
        ("ranking", {"prompt": "p", "responses": ["a", "b"], "ranks": [1, 1]}, R.BAD_RANKS, "tied"),
        ("ranking", {"prompt": "p", "responses": ["a", ""], "ranks": [0, 1]}, R.EMPTY_RESPONSE, ""),
        ("ranking", {"responses": ["a", "b"], "ranks": [0, 1]}, R.MISSING_FIELD, "'prompt'"),
    ],
)
def test_bad_rows_name_reason_and_field(parse, row, reason, mentions):
    with pytest.raises(R.RowError) as e:
        formats.PARSERS[parse](row)
    assert e.value.reason == reason
    assert mentions in e.value.detail
