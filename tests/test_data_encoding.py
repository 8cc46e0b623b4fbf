"""Loading, tokenising, bucketing and collating each format (rlhf_jax.data)."""

import dataclasses

import datasets
import numpy as np
import pytest
from data_testing import BOS, EOS_PLAIN, IM_END, IM_START, PAD, VOCAB, ids, tokenizer, write_jsonl

from rlhf_jax import data
from rlhf_jax.data import report as R

U = lambda text: {"role": "user", "content": text}
A = lambda text: {"role": "assistant", "content": text}
# What the ChatML template renders before a response: the conversation and the generation prompt.
CHAT_PROMPT = lambda *turns: (
    [t for role, text in turns for t in [IM_START, VOCAB[role], *ids(text), IM_END]]
    + [IM_START, VOCAB["assistant"]]
)


def load(tmp_path, rows, *, chat, **overrides):
    path = overrides.pop("path", None) or write_jsonl(tmp_path / "d.jsonl", rows)
    config = data.DataConfig(path=path, cache_dir=str(tmp_path / "cache"), **overrides)
    return data.load_data(config, tokenizer(chat=chat))


def only_batch(dataset, example, length):
    return data.collate(dataset, [example], length=length)


def test_sft_plain_exact_tokens_masks_and_buckets(tmp_path):
    rows = [
        {"prompt": "hello world", "completion": "fine thanks"},
        {"prompt": "", "completion": "one two three four five"},
        {"prompt": "a " * 6, "completion": "yes no"},
    ]
    ds = load(tmp_path, rows, chat=False, bucket_lengths=(8, 16))
    assert ds.kind == "sft" and len(ds) == 3 and ds.report.num_kept == 3 and not ds.report.counts
    assert [e.length for e in ds.examples] == [8, 8, 16]
    batch = only_batch(ds, 0, 8)
    np.testing.assert_array_equal(
        batch["tokens_BxT"][0], [BOS, *ids("hello world fine thanks"), EOS_PLAIN, PAD, PAD]
    )
    np.testing.assert_array_equal(batch["loss_mask_BxT"][0], [0, 0, 0, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(batch["attn_mask_BxT"][0], [1, 1, 1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(batch["positions_BxT"][0], [0, 1, 2, 3, 4, 5, 5, 5])
    assert batch["tokens_BxT"].dtype == np.int32 and batch["loss_mask_BxT"].dtype == bool
    assert batch["example_mask_B"].tolist() == [True] and batch["example_id_B"].tolist() == [0]
    # An empty SFT prompt keeps BOS, so every response token is still predicted.
    np.testing.assert_array_equal(ds.examples[1].prompt_ids, [BOS])
    # prompt (7) + response (3) = 10 goes to the 16 bucket.
    assert only_batch(ds, 2, 16)["tokens_BxT"].shape == (1, 16)


def test_empty_prompt_without_bos_starts_with_eos(tmp_path):
    rows = [{"prompt": "", "completion": "yes"}, {"prompt": "hello", "completion": "yes"}]
    config = data.DataConfig(path=write_jsonl(tmp_path / "d.jsonl", rows), cache_dir=str(tmp_path))
    ds = data.load_data(config, tokenizer(chat=False, bos=False))
    assert [e.prompt_ids.tolist() for e in ds.examples] == [[EOS_PLAIN], ids("hello")]
    batch = data.collate(ds, [0, 1], length=64)
    assert not batch["loss_mask_BxT"][:, 0].any()
    assert batch["loss_mask_BxT"].sum(axis=1).tolist() == [2, 2]


def test_sft_messages_use_the_chat_template_and_end_with_eos(tmp_path):
    rows = [{"messages": [U("hello"), A("fine"), U("how are you"), A("good thanks")]}]
    ds = load(tmp_path, rows, chat=True, bucket_lengths=(32,))
    (e,) = ds.examples
    np.testing.assert_array_equal(
        e.prompt_ids, CHAT_PROMPT(("user", "hello"), ("assistant", "fine"), ("user", "how are you"))
    )
    # EOS is the template's end of turn here, so it is not doubled.
    np.testing.assert_array_equal(e.response_ids[0], [*ids("good thanks"), IM_END])
    batch = only_batch(ds, 0, 32)
    p = len(e.prompt_ids)
    # Only the final assistant turn is trained on.
    assert np.flatnonzero(batch["loss_mask_BxT"][0]).tolist() == [p, p + 1, p + 2]


def test_plain_rows_never_use_the_chat_template(tmp_path):
    ds = load(tmp_path, [{"prompt": "hello", "completion": "fine"}], chat=True, bucket_lengths=(8,))
    np.testing.assert_array_equal(ds.examples[0].prompt_ids, [BOS, *ids("hello")])
    np.testing.assert_array_equal(ds.examples[0].response_ids[0], [*ids("fine"), IM_END])


def test_conversation_without_chat_template_raises(tmp_path):
    with pytest.raises(ValueError, match=r"row 0 is a conversation .* no chat_template"):
        load(tmp_path, [{"messages": [U("hi"), A("fine")]}], chat=False)


def test_preferences_from_parquet_share_one_bucket(tmp_path):
    rows = [
        {"prompt": "what is 2 + 2", "chosen": "4", "rejected": "5 maybe 4 yes 5 no"},
        {"prompt": "hello", "chosen": "hello how are you", "rejected": "no"},
    ]
    path = str(tmp_path / "prefs.parquet")
    datasets.Dataset.from_list(rows).to_parquet(path)
    ds = load(tmp_path, None, chat=False, path=path, bucket_lengths=(8, 16))
    assert ds.kind == "preference" and ds.num_responses == 2
    # The longer of the two decides the bucket: 6 prompt + 7 (rejected with EOS) = 13 > 8.
    assert [e.length for e in ds.examples] == [16, 8]
    batch = data.collate(ds, [0, 1], length=16)
    for side, text in (("chosen", "4"), ("rejected", "5 maybe 4 yes 5 no")):
        tokens, loss = batch[f"{side}_tokens_BxT"][0], batch[f"{side}_loss_mask_BxT"][0]
        assert tokens.tolist()[:6] == [BOS, *ids("what is 2 + 2")]
        assert tokens[loss].tolist() == [*ids(text), EOS_PLAIN]
        assert batch[f"{side}_tokens_BxT"].shape == (2, 16)
        assert batch[f"{side}_positions_BxT"].dtype == np.int32
    assert set(batch) == {
        f"{side}_{name}_BxT"
        for side in ("chosen", "rejected")
        for name in ("tokens", "loss_mask", "attn_mask", "positions")
    } | {"example_mask_B", "example_id_B"}


def test_conversational_preferences_hh_and_ultrafeedback(tmp_path):
    rows = [
        # Anthropic HH as in TRL: the shared earlier messages are the prompt.
        {
            "chosen": [U("hello"), A("hello"), U("how are you"), A("fine thanks")],
            "rejected": [U("hello"), A("hello"), U("how are you"), A("bad")],
        },
        # UltraFeedback-binarized: a prompt string and [user, assistant] lists.
        {
            "prompt": "what is 2 + 2",
            "chosen": [U("what is 2 + 2"), A("4")],
            "rejected": [U("what is 2 + 2"), A("5")],
        },
    ]
    ds = load(tmp_path, rows, chat=True, bucket_lengths=(32,))
    hh, uf = ds.examples
    np.testing.assert_array_equal(
        hh.prompt_ids,
        CHAT_PROMPT(("user", "hello"), ("assistant", "hello"), ("user", "how are you")),
    )
    assert [r.tolist() for r in hh.response_ids] == [
        [*ids("fine thanks"), IM_END],
        [*ids("bad"), IM_END],
    ]
    np.testing.assert_array_equal(uf.prompt_ids, CHAT_PROMPT(("user", "what is 2 + 2")))
    assert [r.tolist() for r in uf.response_ids] == [[*ids("4"), IM_END], [*ids("5"), IM_END]]


def test_rankings_pad_missing_responses(tmp_path):
    rows = [
        {"prompt": "hello", "responses": ["fine", "bad", "ok"], "ranks": [0, 2, 1]},
        {"prompt": "how are you", "responses": ["good", "bad"], "ranks": [0, 1]},
    ]
    ds = load(tmp_path, rows, chat=False, bucket_lengths=(8,))
    assert ds.kind == "ranking" and ds.num_responses == 3
    batch = data.collate(ds, [0, 1, -1], length=8)
    assert batch["tokens_BxKxT"].shape == (3, 3, 8)
    assert batch["mask_BxK"].tolist() == [[True] * 3, [True, True, False], [False] * 3]
    assert batch["ranks_BxK"].tolist() == [[0, 2, 1], [0, 1, 0], [0, 0, 0]]
    assert batch["tokens_BxKxT"][0, 2][batch["loss_mask_BxKxT"][0, 2]].tolist() == [
        *ids("ok"),
        EOS_PLAIN,
    ]
    # Absent responses and filler rows are all padding with every mask off.
    assert not batch["attn_mask_BxKxT"][1, 2].any() and not batch["attn_mask_BxKxT"][2].any()
    assert (batch["tokens_BxKxT"][2] == PAD).all()
    assert batch["example_mask_B"].tolist() == [True, True, False]


BAD_ROWS = [
    {"prompt": "hello", "completion": "fine"},  # 0 ok
    {"prompt": "hello", "completion": None},  # 1 missing
    {"prompt": 7, "completion": "fine"},  # 2 wrong type
    {"prompt": "hello", "completion": "   "},  # 3 empty response
    {"prompt": "hello", "completion": "a " * 20},  # 4 too long
    {"prompt": "how", "completion": "good"},  # 5 ok
    {"prompt": "hello", "completion": ["fine"]},  # 6 a list of non-messages
    {"prompt": "hello", "completion": None},  # 7 missing
]


def test_bad_rows_are_counted_by_reason(tmp_path):
    ds = load(tmp_path, BAD_ROWS, chat=False, bucket_lengths=(8, 16))
    report = ds.report
    assert [e.row for e in ds.examples] == [0, 5]
    assert report.num_rows == 8 and report.num_kept == 2 and report.num_dropped == 6
    assert report.counts == {
        R.MISSING_FIELD: 2,
        R.WRONG_TYPE: 1,
        R.EMPTY_RESPONSE: 1,
        R.TOO_LONG: 1,
        R.BAD_MESSAGES: 1,
    }
    assert report.example_rows[R.MISSING_FIELD] == [1, 7]
    assert report.example_rows[R.TOO_LONG] == [4]
    summary = report.summary()
    assert "8 rows, 2 used, 6 dropped, 0 truncated" in summary
    assert "missing_field: 2 (dropped); rows [1, 7]" in summary
    assert "> the largest bucket 16" in summary
    # What to do about it (a preset's small buckets drop a user's longer rows).
    assert "raise data.bucket_lengths, or set data.too_long=truncate" in summary


@pytest.mark.parametrize(("row", "reason"), [(1, R.MISSING_FIELD), (4, R.TOO_LONG)])
def test_strict_names_file_row_and_reason(tmp_path, row, reason):
    rows = [BAD_ROWS[0], BAD_ROWS[5], BAD_ROWS[row]]
    with pytest.raises(R.RowError, match=rf"d\.jsonl: row 2: {reason}: ") as e:
        load(tmp_path, rows, chat=False, bucket_lengths=(8, 16), strict=True)
    assert e.value.row == 2 and e.value.reason == reason


def test_truncate_cuts_the_prompt_from_the_left_and_counts_it(tmp_path):
    rows = [
        {"prompt": "one two three four five", "completion": "yes no"},  # 6 + 3 = 9 > 8
        {"prompt": "hello", "completion": "one two three four five six seven"},  # response > 7
    ]
    # Truncation is the chosen policy, so strict counts it rather than raising.
    strict = load(
        tmp_path, rows[:1], chat=False, bucket_lengths=(4, 8), too_long="truncate", strict=True
    )
    (e,) = strict.examples
    # BOS stays in front; the oldest prompt words go.
    np.testing.assert_array_equal(e.prompt_ids, [BOS, *ids("two three four five")])
    np.testing.assert_array_equal(e.response_ids[0], [*ids("yes no"), EOS_PLAIN])
    assert e.length == 8 and strict.report.counts == {R.TRUNCATED: 1}
    ds = load(tmp_path, rows, chat=False, bucket_lengths=(4, 8), too_long="truncate")
    assert ds.report.counts == {R.TRUNCATED: 1, R.TOO_LONG: 1}
    assert "response alone does not fit" in ds.report.first_detail[R.TOO_LONG]
    assert "1 truncated" in ds.report.summary()


def test_bad_lines_duplicates_and_identical_pairs_are_counted(tmp_path):
    path = tmp_path / "p.jsonl"
    lines = [
        b'{"prompt": "hello", "chosen": "good", "rejected": "bad"}',
        b'{"prompt": "hello", "chosen": "good", "rejected": "bad"}',  # a duplicate: kept
        b'{"prompt": "hello", "chosen": "yes", "rejected": "yes"}',  # chosen = rejected
        b'{"prompt": "hi", "chosen": "g\xff\xfeood", "rejected": "bad"}',  # not UTF-8
        b"[1, 2]",  # JSON, not an object
        b'{"prompt": "a", "chosen"',  # not JSON
        b'{"prompt": "how are you", "chosen": "fine", "rejected": "bad"}',
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    tok = tokenizer(chat=False)
    config = data.DataConfig(path=str(path), bucket_lengths=(16,), batch_size=2)
    ds = data.load_data(config, tok)
    assert ds.report.counts == {
        R.DUPLICATE: 1, R.IDENTICAL_RESPONSES: 1, R.BAD_LINE: 3
    }  # fmt: skip
    assert len(ds) == 3 and ds.report.num_dropped == 4
    assert ds.report.example_rows[R.BAD_LINE] == [3, 4, 5]
    summary = ds.report.summary()
    assert "line 4: not UTF-8" in summary and "duplicate: 1 (kept)" in summary
    with pytest.raises(R.RowError, match=r"p\.jsonl: row 1: duplicate"):
        data.load_data(dataclasses.replace(config, strict=True), tok)


def test_too_many_responses(tmp_path):
    rows = [{"prompt": "hello", "responses": ["a", "the", "is"], "ranks": [0, 1, 2]}]
    ds = load(tmp_path, rows * 2, chat=False, bucket_lengths=(8,), max_responses=2)
    assert ds.report.counts == {R.TOO_MANY_RESPONSES: 2} and len(ds) == 0


def test_file_errors_name_the_path(tmp_path):
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl"):
        data.load_rows(missing)
    # A bad line of JSON Lines is a bad row (counted by the data report), not a bad file.
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "comp\n')
    rows = data.load_rows(str(bad), cache_dir=str(tmp_path / "cache"))
    assert rows.num_rows == 2 and rows[1][data.loading.BAD_LINE_COLUMN].startswith(
        "line 2: not JSON"
    )
    array = tmp_path / "a.json"
    array.write_text('[\n  {"prompt": "a", "completion": "b"},\n  {"prompt": }\n]\n')
    with pytest.raises(ValueError, match=r"a\.json: not valid JSON: line 3"):
        data.load_rows(str(array), cache_dir=str(tmp_path / "cache"))
    other = tmp_path / "d.csv"
    other.write_text("prompt,completion\n")
    with pytest.raises(ValueError, match=r"d\.csv: unsupported file type '\.csv'"):
        data.load_rows(str(other))


def test_wrong_columns_raise_with_file_and_columns(tmp_path):
    with pytest.raises(ValueError, match=r"d\.jsonl: columns \['answer', 'question'\] match no"):
        load(tmp_path, [{"question": "a", "answer": "b"}], chat=False)


def test_json_array_file_and_eval_fraction(tmp_path):
    path = tmp_path / "d.json"
    rows = [{"prompt": "hello", "chosen": "good", "rejected": "bad"}] * 10
    datasets.Dataset.from_list(rows).to_json(str(path), lines=False)
    config = data.DataConfig(
        path=str(path), cache_dir=str(tmp_path / "cache"), eval_fraction=0.3, seed=1
    )
    train, eval_ = data.load_train_eval(config, tokenizer(chat=False))
    assert (len(train), len(eval_)) == (7, 3)
    rows_train = {e.row for e in train.examples}
    rows_eval = {e.row for e in eval_.examples}
    assert not rows_train & rows_eval and rows_train | rows_eval == set(range(10))
    again = data.load_train_eval(config, tokenizer(chat=False))[1]
    assert {e.row for e in again.examples} == rows_eval


def test_config_validation():
    with pytest.raises(ValueError, match="bucket_lengths"):
        data.DataConfig(path="x.jsonl", bucket_lengths=(128, 64))
    with pytest.raises(ValueError, match="too_long"):
        data.DataConfig(path="x.jsonl", too_long="cut")
    with pytest.raises(ValueError, match="format"):
        data.DataConfig(path="x.jsonl", format="dpo")
    assert data.DataConfig(path="x", bucket_lengths=[8, 16]).bucket_lengths == (8, 16)


def test_soft_labels_become_label_b_and_bad_ones_are_counted(tmp_path):
    rows = [
        {"prompt": "hello", "chosen": "world", "rejected": "hello", "chosen_probability": 0.75},
        {"prompt": "world", "chosen": "hello", "rejected": "world"},  # a hard label
        {"prompt": "hello", "chosen": "hello", "rejected": "world", "chosen_probability": 1.5},
        {"prompt": "hello", "chosen": "world", "rejected": "world hello",
         "chosen_probability": "high"},
    ]  # fmt: skip
    ds = load(tmp_path, rows, chat=False, bucket_lengths=(8,))
    assert ds.soft_labels and [e.row for e in ds.examples] == [0, 1]
    assert ds.report.counts == {R.BAD_LABEL: 2}
    assert "expected a probability in [0, 1]" in ds.report.summary()
    batch = data.collate(ds, [0, 1, -1], length=8)
    np.testing.assert_array_equal(batch["label_B"], np.array([0.75, 1.0, 1.0], np.float32))
    # Without any soft label the batch has no label_B (the programs stay as they were).
    hard = load(tmp_path, rows[1:2], chat=False, bucket_lengths=(8,), path=None)
    assert not hard.soft_labels and "label_B" not in data.collate(hard, [0], length=8)
