"""What every side of the side-by-side benchmarks shares: the model shape, the synthetic data,
the on-disk HF checkpoints all sides load, and the step-on-command worker protocol.

Imports only numpy and the standard library at module level, so that every virtualenv
(.venv, .venv-trl112, .venv-tunix) can import it.

Worker protocol (one worker process per side and row, driven by ``side_by_side.py``): the worker
builds its side, runs the warm-up steps, prints ``READY <json>``; then for each ``step`` line on
stdin it runs one step and prints ``TIME <seconds>`` (measured by the worker itself, so the pipe
costs nothing); ``quit`` ends it. Other stdout lines are ignored by the driver.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

# The model: a Llama-style decoder small enough for a 2-core CPU. (B batch, T length.)
LAYERS, WIDTH, HEADS, MLP, VOCAB = 4, 256, 4, 1024, 1024
PAD, BOS, EOS = 0, 1, 2
# Training rows: batch 16 (pairs for reward/DPO), length 128 = 64 prompt + 64 response tokens.
TRAIN_BATCH, PROMPT_LEN, RESPONSE_LEN = 16, 64, 64
SEQ_LEN = PROMPT_LEN + RESPONSE_LEN
# Generation row: batch 16, ragged left-padded prompts of 32, 64 new tokens.
GEN_BATCH, GEN_PROMPT, GEN_NEW = 16, 32, 64
# PPO row: 16 episodes, prompts of 32, responses of 64, 4 epochs × 2 minibatches of 8.
PPO_BATCH, PPO_PROMPT, PPO_RESPONSE, PPO_EPOCHS, PPO_MINIBATCHES = 16, 32, 64, 4, 2
PPO_TEMPERATURE, PPO_KL_COEF, PPO_LR = 0.7, 0.05, 1e-5
LEARNING_RATE = 1e-5


def hf_llama_config():
    import transformers

    return transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=WIDTH,
        intermediate_size=MLP,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        max_position_embeddings=2048,
        initializer_range=0.1,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
        tie_word_embeddings=False,
    )


def word(i: int) -> str:
    """Token id i ≥ 3 is the word ``w{i}`` of the benchmark tokenizer."""
    return f"w{i}"


def write_artifacts(directory: str) -> None:
    """An HF causal LM (``lm/``), a reward model with a scalar head (``rm/``) and a word-level
    tokenizer in both, written by transformers' ``save_pretrained``: every side loads these."""
    import tokenizers
    import torch
    import transformers

    vocab = {"<pad>": PAD, "<s>": BOS, "</s>": EOS}
    vocab.update({word(i): i for i in range(3, VOCAB)})
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    torch.manual_seed(0)
    lm = transformers.LlamaForCausalLM(hf_llama_config())
    lm.generation_config.eos_token_id = EOS
    lm.generation_config.pad_token_id = PAD
    lm.save_pretrained(os.path.join(directory, "lm"))
    fast.save_pretrained(os.path.join(directory, "lm"))
    rm_config = hf_llama_config()
    rm_config.num_labels = 1
    torch.manual_seed(1)
    rm = transformers.LlamaForSequenceClassification(rm_config)
    rm.save_pretrained(os.path.join(directory, "rm"))
    fast.save_pretrained(os.path.join(directory, "rm"))


def random_tokens(rng, shape):
    return rng.integers(3, VOCAB, shape).astype(np.int32)  # no pad/BOS/EOS inside sequences


def pair_tokens(seed: int = 0):
    """(chosen, rejected), each (B, T) full-length rows sharing their first PROMPT_LEN tokens."""
    rng = np.random.default_rng(seed)
    chosen = random_tokens(rng, (TRAIN_BATCH, SEQ_LEN))
    rejected = random_tokens(rng, (TRAIN_BATCH, SEQ_LEN))
    rejected[:, :PROMPT_LEN] = chosen[:, :PROMPT_LEN]
    return chosen, rejected


def ragged_prompts(batch: int, length: int, seed: int = 0):
    """Left-padded prompts with ragged padding, as real prompt batches have: (tokens, mask)."""
    rng = np.random.default_rng(seed)
    prompt = rng.integers(3, VOCAB, (batch, length)).astype(np.int32)
    mask = np.ones((batch, length), bool)
    for row in range(batch):
        mask[row, : rng.integers(0, length // 2)] = False
    prompt[~mask] = PAD
    return prompt, mask


def text(ids) -> str:
    return " ".join(word(int(i)) for i in ids)


# ------------------------------------------------------------------------------------------
# Worker side of the protocol.


def ready(info: dict | None = None) -> None:
    print("READY " + json.dumps(info or {}), flush=True)


def next_command() -> str:
    line = sys.stdin.readline()
    return line.strip() or "quit"


def report(seconds: float) -> None:
    print(f"TIME {seconds:.6f}", flush=True)


def serve(step, *, warmup: int, info: dict | None = None) -> None:
    """Runs ``step()`` (which blocks until its results exist) ``warmup`` times, then on command."""
    for _ in range(warmup):
        step()
    ready(info)
    while next_command() == "step":
        start = time.perf_counter()
        step()
        report(time.perf_counter() - start)


def quit_now() -> None:
    sys.stdout.flush()
    os._exit(0)  # trainers own the loop: leave without unwinding them
