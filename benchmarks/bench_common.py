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

# Shapes and precision come from a profile, chosen by RLHF_BENCH_PROFILE (the driver sets it for
# its workers): "cpu" (default) is a small Llama for a 2-core CPU in float32; "gpu" is Qwen2-0.5B
# (24 layers, width 896, 14 query / 2 KV heads, MLP 4864, vocabulary 151,936, tied embeddings)
# and "gpu-1.5b" Qwen2-1.5B, both with float32 parameters computing in bfloat16.
PROFILES = {
    "cpu": dict(
        family="llama", layers=4, width=256, heads=4, kv_heads=4, mlp=1024, vocab=1024,
        tied=False, dtype="float32", device="cpu",
        train_batch=16, prompt_len=64, response_len=64,
        gen_batch=16, gen_prompt=32, gen_new=64,
        ppo_batch=16, ppo_prompt=32, ppo_response=64,
    ),
    "gpu": dict(
        family="qwen2", layers=24, width=896, heads=14, kv_heads=2, mlp=4864, vocab=151936,
        tied=True, dtype="bfloat16", device="gpu",
        train_batch=16, prompt_len=256, response_len=256,
        gen_batch=64, gen_prompt=64, gen_new=128,
        ppo_batch=64, ppo_prompt=64, ppo_response=128,
    ),
}  # fmt: skip
PROFILES["gpu-1.5b"] = dict(PROFILES["gpu"], layers=28, width=1536, heads=12, kv_heads=2, mlp=8960)
# The "gpu" path in miniature, on the CPU: checks the GPU driver end to end before device time.
PROFILES["qwen2-smoke"] = dict(
    PROFILES["gpu"], layers=2, width=128, heads=4, kv_heads=2, mlp=256, vocab=4096,
    device="cpu", train_batch=4, prompt_len=32, response_len=32, gen_batch=4, gen_prompt=16,
    gen_new=16, ppo_batch=8, ppo_prompt=16, ppo_response=16,
)  # fmt: skip
PROFILE_NAME = os.environ.get("RLHF_BENCH_PROFILE", "cpu")
if PROFILE_NAME not in PROFILES:
    raise ValueError(f"RLHF_BENCH_PROFILE={PROFILE_NAME!r}; expected one of {sorted(PROFILES)}")
PROFILE = PROFILES[PROFILE_NAME]
# Our model's accelerator options for a run (ModelConfig.remat / attention / logprob_chunk /
# scan_unroll), from RLHF_BENCH_MODEL="remat=block,attention=cudnn" (the driver sets it for its
# workers; peers ignore it). Empty: the ModelConfig defaults. ``lora=R`` trains rank-R adapters
# (α = 2R) on every projection over frozen weights instead (ours only).
MODEL_FIELDS = {
    "remat": str, "attention": str, "logprob_chunk": int, "scan_unroll": int, "lora": int
}  # fmt: skip
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


def parse_model_options(text: str) -> dict:
    """``"remat=block,attention=cudnn"`` -> ``{"remat": "block", "attention": "cudnn"}``."""
    options = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or name not in MODEL_FIELDS:
            raise ValueError(
                f"RLHF_BENCH_MODEL item {item!r}: expected field=value with field one of "
                f"{sorted(MODEL_FIELDS)}"
            )
        options[name] = MODEL_FIELDS[name](value)
    if "lora" in options:  # a ModelSource's lora field
        rank = options["lora"]
        options["lora"] = {"rank": rank, "alpha": 2.0 * rank, "targets": LORA_TARGETS}
    return options


MODEL_OPTIONS = parse_model_options(os.environ.get("RLHF_BENCH_MODEL", ""))

# The model. (B batch, T length.)
FAMILY, LAYERS, WIDTH = PROFILE["family"], PROFILE["layers"], PROFILE["width"]
HEADS, KV_HEADS, MLP, VOCAB = (
    PROFILE["heads"],
    PROFILE["kv_heads"],
    PROFILE["mlp"],
    PROFILE["vocab"],
)
DTYPE = PROFILE["dtype"]  # compute dtype; parameters are float32 on every side
DEVICE = PROFILE["device"]
JAX_PLATFORMS = "cpu" if DEVICE == "cpu" else "cuda"
PAD, BOS, EOS = 0, 1, 2
# Training rows: batch TRAIN_BATCH (pairs for reward/DPO) of PROMPT_LEN + RESPONSE_LEN tokens.
TRAIN_BATCH, PROMPT_LEN, RESPONSE_LEN = (
    PROFILE["train_batch"],
    PROFILE["prompt_len"],
    PROFILE["response_len"],
)
SEQ_LEN = PROMPT_LEN + RESPONSE_LEN
# Generation row: ragged left-padded prompts, GEN_NEW new tokens.
GEN_BATCH, GEN_PROMPT, GEN_NEW = PROFILE["gen_batch"], PROFILE["gen_prompt"], PROFILE["gen_new"]
# PPO row: PPO_BATCH episodes, 4 epochs × 2 minibatches.
PPO_BATCH, PPO_PROMPT, PPO_RESPONSE = (
    PROFILE["ppo_batch"],
    PROFILE["ppo_prompt"],
    PROFILE["ppo_response"],
)
PPO_EPOCHS, PPO_MINIBATCHES = 4, 2
PPO_TEMPERATURE, PPO_KL_COEF, PPO_LR = 0.7, 0.05, 1e-5
LEARNING_RATE = 1e-5


def hf_config():
    import transformers

    common = dict(
        vocab_size=VOCAB,
        hidden_size=WIDTH,
        intermediate_size=MLP,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
        tie_word_embeddings=PROFILE["tied"],
    )
    if FAMILY == "qwen2":
        return transformers.Qwen2Config(**common, max_position_embeddings=32768)
    return transformers.LlamaConfig(**common, max_position_embeddings=2048, initializer_range=0.1)


def _layer_params(p: dict) -> int:
    """Matrix parameters of one decoder layer (q, k, v, o and the gated MLP)."""
    d, k = p["width"], p["width"] // p["heads"]
    return d * p["heads"] * k * 2 + d * p["kv_heads"] * k * 2 + 3 * d * p["mlp"]


def train_step_flops(row: str, p: dict = PROFILE) -> float:
    """Model FLOPs of one training step of ``row`` under profile ``p``, PaLM's convention: 6 per
    matrix parameter per token (forward 2, backward 4), plus 6·2·S·d per layer per token for
    attention scores and values over a row of S tokens (full S × S, causality not discounted).
    The LM head counts at the response positions the SFT loss needs; the reward model has a
    scalar head (negligible).

    - "sft": batch rows of T = prompt + response tokens.
    - "reward": what the reward step computes with packed pairs (``rlhf_jax.training.pairs``,
      the phases' default): one row of T + R tokens per pair, [prompt | chosen | rejected].
    - "reward_unpacked": chosen and rejected as separate rows, 2 × batch rows of T tokens.
    """
    seq = p["prompt_len"] + p["response_len"]
    layer_matrices = 2 * _layer_params(p)  # forward, per token per layer

    def trunk(rows: int, length: int) -> float:
        return rows * length * p["layers"] * (layer_matrices + 2 * length * p["width"])

    if row == "sft":
        head = p["train_batch"] * p["response_len"] * 2 * p["width"] * p["vocab"]
        return 3.0 * (trunk(p["train_batch"], seq) + head)
    if row == "reward":
        return 3.0 * trunk(p["train_batch"], seq + p["response_len"])
    if row == "reward_unpacked":
        return 3.0 * trunk(2 * p["train_batch"], seq)
    raise ValueError(f"no FLOP count for row {row!r}")


def decode_step_bytes(p: dict = PROFILE, *, batch: int, slots: int) -> float:
    """Bytes one decode step must read at least: every matrix once in the compute dtype (the
    LM head included; an untied embedding table is read only at the batch's rows) and the
    key/value cache (``slots`` positions of every layer; ours reads all preallocated slots)."""
    size = 2 if p["dtype"] == "bfloat16" else 4
    k = p["width"] // p["heads"]
    matrices = p["layers"] * _layer_params(p) + p["vocab"] * p["width"]
    cache = 2 * p["layers"] * batch * p["kv_heads"] * slots * k
    return float(size * (matrices + cache))


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
    lm = transformers.AutoModelForCausalLM.from_config(hf_config())
    lm.generation_config.eos_token_id = EOS
    lm.generation_config.pad_token_id = PAD
    lm.save_pretrained(os.path.join(directory, "lm"))
    fast.save_pretrained(os.path.join(directory, "lm"))
    rm_config = hf_config()
    rm_config.num_labels = 1
    torch.manual_seed(1)
    rm = transformers.AutoModelForSequenceClassification.from_config(rm_config)
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


def report(seconds: float, parts: dict | None = None) -> None:
    """``TIME <seconds>``, then the step's parts (e.g. PPO's rollout/score/update) as JSON."""
    print(f"TIME {seconds:.6f}" + (" " + json.dumps(parts) if parts else ""), flush=True)


def serve(step, *, warmup: int, info: dict | None = None) -> None:
    """Runs ``step()`` (which blocks until its results exist) ``warmup`` times, then on command.
    ``step`` may return a dict of part times in seconds; it is reported with the step's time."""
    for _ in range(warmup):
        step()
    ready(info)
    while next_command() == "step":
        start = time.perf_counter()
        parts = step()
        report(time.perf_counter() - start, parts)


def quit_now() -> None:
    sys.stdout.flush()
    os._exit(0)  # trainers own the loop: leave without unwinding them
