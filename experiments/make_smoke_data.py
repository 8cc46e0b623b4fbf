"""Writes the tiny tokenizer and data files the ``smoke`` configs train on (no download).

    python experiments/make_smoke_data.py [--out rlhf_jax/presets/smoke_data]

A word-level tokenizer over a fixed vocabulary (pad/bos/eos specials), and:
  sft.jsonl    prompt → completion: each prompt word followed by its successor in a counting
               sequence, a deterministic, learnable map;
  prefs.jsonl  prompt/chosen/rejected: the chosen answer starts with "good", the rejected with
               "bad" — separable, so a reward model and DPO must reach high accuracy.
The committed files under rlhf_jax/presets/smoke_data (package data) are this script's output
for the default seed.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, processors

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
NUMBERS = "one two three four five six seven eight nine ten".split()
WORDS = [*NUMBERS, "good", "bad", "next", "is"]


def write_tokenizer(directory: pathlib.Path) -> None:
    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
    )
    fast.save_pretrained(directory)


def rows(seed: int, n: int = 128):
    rng = np.random.default_rng(seed)
    sft, prefs = [], []
    for _ in range(n):
        a, b = rng.choice(len(NUMBERS) - 1, 2)
        prompt = f"{NUMBERS[a]} {NUMBERS[b]} next is"
        sft.append({"prompt": prompt, "completion": f"{NUMBERS[a + 1]} {NUMBERS[b + 1]}"})
        filler = " ".join(rng.choice(NUMBERS, 2))
        prefs.append({"prompt": prompt, "chosen": f"good {filler}", "rejected": f"bad {filler}"})
    return sft, prefs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = pathlib.Path(__file__).parents[1] / "rlhf_jax" / "presets" / "smoke_data"
    parser.add_argument("--out", default=str(default_out))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_tokenizer(out / "tokenizer")
    sft, prefs = rows(args.seed)
    for name, data in (("sft.jsonl", sft), ("prefs.jsonl", prefs)):
        (out / name).write_text("".join(json.dumps(r) + "\n" for r in data))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
