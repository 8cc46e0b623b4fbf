"""From a `DataConfig` and a tokenizer to tokenised datasets and batch iterators."""

from __future__ import annotations

import dataclasses

from rlhf_jax.data.config import DataConfig
from rlhf_jax.data.encoding import TokenizedDataset, tokenize_rows
from rlhf_jax.data.formats import detect_kind
from rlhf_jax.data.iterator import BatchIterator
from rlhf_jax.data.loading import load_rows
from rlhf_jax.data.split import train_eval_split


def load_data(config: DataConfig, tokenizer, *, split: str | None = None) -> TokenizedDataset:
    """Loads, validates, tokenises and buckets one split (``config.split`` by default)."""
    split = config.split if split is None else split
    rows = load_rows(config.path, split=split, cache_dir=config.cache_dir)
    source = config.path if split == "train" else f"{config.path}[{split}]"
    kind = detect_kind(rows.column_names, format=config.format, source=source)
    return tokenize_rows(
        rows,
        tokenizer,
        kind=kind,
        bucket_lengths=config.bucket_lengths,
        too_long=config.too_long,
        strict=config.strict,
        max_responses=config.max_responses,
        source=source,
    )


def load_train_eval(
    config: DataConfig, tokenizer
) -> tuple[TokenizedDataset, TokenizedDataset | None]:
    """(train, eval): eval from ``config.eval_split``, else a seeded ``config.eval_fraction``
    of the examples, else None. Rankings get one K for both."""
    train = load_data(config, tokenizer)
    if not train.examples:
        raise ValueError(f"data.path={config.path!r}: no usable examples\n{train.report.summary()}")
    if config.eval_split is not None:
        eval_ = load_data(config, tokenizer, split=config.eval_split)
        k = max(train.num_responses, eval_.num_responses)
        return (
            dataclasses.replace(train, num_responses=k),
            dataclasses.replace(eval_, num_responses=k),
        )
    if config.eval_fraction > 0:
        return train_eval_split(train, eval_fraction=config.eval_fraction, seed=config.seed)
    return train, None


def make_iterator(
    dataset: TokenizedDataset,
    config: DataConfig,
    *,
    num_epochs: int | None = None,
    shuffle: bool | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> BatchIterator:
    """A `BatchIterator` with the config's batch size, seed and shuffle (overridable)."""
    return BatchIterator(
        dataset,
        batch_size=config.batch_size,
        seed=config.seed,
        shuffle=config.shuffle if shuffle is None else shuffle,
        num_epochs=num_epochs,
        process_index=process_index,
        process_count=process_count,
        response_window=config.response_window,
    )
