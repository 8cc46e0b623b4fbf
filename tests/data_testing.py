"""Tiny tokenizers and data files for the data tests (no network, no hub).

The tokenizer is word-level over a fixed vocabulary, so every word is exactly one token and a
test can state the expected ids: `ids("hello world")` == [VOCAB["hello"], VOCAB["world"]].
It adds BOS in front of plain text; with ``chat=True`` it has a ChatML chat template whose
end-of-turn token ``<|im_end|>`` is also EOS (as in Qwen2 instruct); without, EOS is ``<eos>``.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile

import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, processors

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>", "<|im_start|>", "<|im_end|>"]
WORDS = (
    "user assistant system hello world how are you fine thanks good bad the a is what 2 + "
    "equals 4 5 one two three four yes no maybe sure ok five six seven eight"
).split()
VOCAB = {w: i for i, w in enumerate(SPECIALS + WORDS)}
PAD, BOS, EOS_PLAIN, UNK, IM_START, IM_END = range(6)
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def ids(text: str) -> list[int]:
    """The token ids of space-separated known words (no special tokens added)."""
    return [VOCAB[w] for w in text.split()]


def make_tokenizer(directory, *, chat: bool, bos: bool = True):
    """Builds, saves to ``directory`` and reloads (as users do) the tiny tokenizer.

    ``bos=False`` gives one that, like GPT-2's, has no BOS and adds no special tokens.
    """
    tok = Tokenizer(models.WordLevel(vocab=VOCAB, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", BOS)]
        )
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<bos>" if bos else None,
        eos_token="<|im_end|>" if chat else "<eos>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    if chat:
        fast.chat_template = CHATML
    os.makedirs(directory, exist_ok=True)
    fast.save_pretrained(directory)
    return transformers.AutoTokenizer.from_pretrained(directory)


def write_jsonl(path, rows) -> str:
    """Writes one JSON object per line; returns the path as a string."""
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)


@functools.cache
def tokenizer(*, chat: bool, bos: bool = True):
    """One tiny tokenizer per variant for the whole test run (hypothesis tests reuse it)."""
    return make_tokenizer(tempfile.mkdtemp(prefix="rlhf_jax_tok_"), chat=chat, bos=bos)
