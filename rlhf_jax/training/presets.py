"""Config presets for the offline phases, shared by ``configs/sft.py``, ``reward.py``, ``dpo.py``.

Variants (the ``arg`` of ``get_config``):
  smoke          a 2-layer Llama-style model from scratch on ``configs/smoke_data`` — runs on a
                 laptop CPU in seconds; what the tests use
  gpt2           GPT-2 (124M) from a local HF checkpoint, on TL;DR summarisation
  pythia1b_tldr  Pythia-1B (GPT-NeoX), the TL;DR RLHF reproductions' model (Huang et al. 2024)
  qwen05b_hh     Qwen2.5-0.5B on Anthropic HH (helpful-base), conversational
Real checkpoints are read from local directories (``model.hf_path``); fetch one first, e.g.
``huggingface-cli download EleutherAI/pythia-1b-deduped --local-dir checkpoints/pythia-1b``.
Datasets default to hub names (``trl-lib/...``), which need network access; any local JSONL or
Parquet file in a supported format works too (``--config.data.path=...``).
"""

from __future__ import annotations

import pathlib

import ml_collections

REPO = pathlib.Path(__file__).resolve().parents[2]
SMOKE_DATA = REPO / "configs" / "smoke_data"

VARIANTS = ("smoke", "gpt2", "pythia1b_tldr", "qwen05b_hh")

# A tiny Llama-style architecture for CPU runs (ModelConfig fields).
SMOKE_MODEL = dict(
    model_type="llama",
    vocab_size=32,  # the smoke tokenizer has 18 tokens; 32 keeps shapes round
    hidden_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    mlp_dim=128,
    norm="rms",
    norm_eps=1e-5,
    activation="silu",
    gated_mlp=True,
    positions="rope",
    max_position_embeddings=64,
    rotary_dim=16,
)

# Per variant: model source, data per phase, bucket lengths, batch, steps, learning rates.
_PRESETS = {
    "smoke": dict(
        model=dict(init=SMOKE_MODEL, tokenizer=str(SMOKE_DATA / "tokenizer")),
        data={"sft": str(SMOKE_DATA / "sft.jsonl"), "pref": str(SMOKE_DATA / "prefs.jsonl")},
        buckets=(8, 12),
        batch_size=16,
        steps={"sft": 60, "reward": 40, "dpo": 40},
        lr={"sft": 3e-3, "reward": 3e-3, "dpo": 1e-3},
        dtype="float32",
    ),
    "gpt2": dict(
        model=dict(hf_path="checkpoints/gpt2"),
        data={"sft": "trl-lib/tldr", "pref": "trl-lib/tldr-preference"},
        buckets=(256, 512),
        batch_size=64,
        steps={"sft": 2000, "reward": 1000, "dpo": 1000},
        lr={"sft": 3e-5, "reward": 3e-6, "dpo": 5e-7},
        dtype="bfloat16",
    ),
    "pythia1b_tldr": dict(
        model=dict(hf_path="checkpoints/pythia-1b-deduped"),
        data={"sft": "trl-lib/tldr", "pref": "trl-lib/tldr-preference"},
        buckets=(256, 512),
        batch_size=128,
        steps={"sft": 900, "reward": 700, "dpo": 700},
        lr={"sft": 3e-6, "reward": 3e-6, "dpo": 5e-7},
        dtype="bfloat16",
    ),
    "qwen05b_hh": dict(
        model=dict(hf_path="checkpoints/qwen2.5-0.5b"),
        data={"sft": "trl-lib/hh-rlhf-helpful-base", "pref": "trl-lib/hh-rlhf-helpful-base"},
        buckets=(256, 512, 1024),
        batch_size=64,
        steps={"sft": 1500, "reward": 1000, "dpo": 1000},
        lr={"sft": 1e-5, "reward": 5e-6, "dpo": 5e-7},
        dtype="bfloat16",
    ),
}


def _str(value: str | None):
    """An optional string field that the command line can set even when it starts as None."""
    return ml_collections.FieldReference(value, field_type=str)


def _int(value: int | None):
    return ml_collections.FieldReference(value, field_type=int)


def phase_config(phase: str, arg: str | None) -> ml_collections.ConfigDict:
    """The ConfigDict of ``phase`` ('sft', 'reward', 'dpo') for variant ``arg``."""
    variant = arg or "smoke"
    if variant not in _PRESETS:
        raise ValueError(f"unknown config variant {variant!r}; expected one of {VARIANTS}")
    p = _PRESETS[variant]
    c = ml_collections.ConfigDict()
    c.run_dir = f"runs/{variant}/{phase}"  # checkpoints, logs and the final artifact

    c.model = ml_collections.ConfigDict()
    c.model.hf_path = _str(p["model"].get("hf_path"))  # local HF checkpoint directory
    c.model.artifact = _str(None)  # or an earlier phase's artifact dir (runs/.../artifact)
    c.model.init = p["model"].get("init")  # or random init of this architecture
    c.model.tokenizer = _str(p["model"].get("tokenizer"))  # tokenizer dir (default: hf_path)
    c.model.dtype = p["dtype"]  # compute dtype
    c.model.param_dtype = "float32"  # parameter storage dtype

    c.data = ml_collections.ConfigDict()
    c.data.path = p["data"]["sft" if phase == "sft" else "pref"]  # file or hub dataset
    c.data.split = "train"  # split to train on
    c.data.format = "auto"  # auto | sft | preference | ranking
    c.data.bucket_lengths = p["buckets"]  # static sequence lengths (one trace each)
    c.data.too_long = "drop"  # drop | truncate (prompt from the left); both counted
    c.data.strict = False  # raise on the first bad row instead of counting it
    c.data.batch_size = p["batch_size"]  # global batch (sequences or pairs) per step
    c.data.seed = 0  # shuffle seed
    c.data.shuffle = True  # reshuffle every epoch
    c.data.response_window = True  # LM logits only on the responses' window of positions
    c.data.max_responses = _int(None)  # rankings: response slots K (None: the most in a row)
    c.data.eval_split = _str(None)  # held-out split name, or ...
    c.data.eval_fraction = 0.0 if phase == "sft" else 0.1  # ... a held-out fraction
    c.data.cache_dir = _str(None)  # HF datasets cache

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.learning_rate = p["lr"][phase]  # peak learning rate
    c.optimizer.schedule = "cosine"  # constant | linear | cosine decay after warmup
    c.optimizer.warmup_steps = max(1, p["steps"][phase] // 20)  # linear warmup steps
    c.optimizer.total_steps = p["steps"][phase]  # schedule length
    c.optimizer.end_lr_fraction = 0.0  # final LR as a fraction of the peak
    c.optimizer.weight_decay = 0.0  # decoupled weight decay on matrices
    c.optimizer.b1 = 0.9  # Adam β1
    c.optimizer.b2 = 0.999  # Adam β2
    c.optimizer.eps = 1e-8  # Adam ε outside the square root (PyTorch placement)
    c.optimizer.eps_root = 0.0  # Adam ε inside the square root (TensorFlow placement)
    c.optimizer.max_grad_norm = 1.0  # global-norm clipping (None: off)

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = 1  # pure data-parallel axis
    c.mesh.fsdp = -1  # data-parallel axis with sharded params (-1: the remaining devices)
    c.mesh.tensor = 1  # tensor-parallel axis (heads / MLP / vocabulary)
    c.mesh.num_devices = -1  # use the first N devices (-1: all)

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.save_every = max(1, p["steps"][phase] // 4)  # steps between checkpoints
    c.checkpoint.keep = 2  # checkpoints kept
    c.checkpoint.async_save = True  # write in the background

    c.total_steps = p["steps"][phase]  # optimizer steps in the phase
    c.grad_accum_steps = 1  # micro-batches per step
    c.log_every = 10  # steps between metric writes
    c.eval_every = 0  # steps between held-out evaluations (0: at the end only)
    c.seed = 0  # init and step randomness
    c.skip_nonfinite = False  # skip non-finite updates (counted) instead of stopping
    c.console = True  # progress bar
    c.tensorboard = True  # TensorBoard events

    c.reward = ml_collections.ConfigDict()
    c.reward.label_smoothing = 0.0  # BT label-noise rate
    c.reward.center_coef = 0.0 if variant == "smoke" else 0.01  # reward centering
    c.reward.pooling = "last"  # readout: "last" valid token (HF-exportable) or response "mean"
    c.reward.share_prompt = True  # one forward per pair, [prompt | chosen | rejected]

    c.dpo = ml_collections.ConfigDict()
    c.dpo.loss_type = "sigmoid"  # sigmoid | robust | hinge | ipo | simpo | orpo
    c.dpo.beta = 0.1  # β
    c.dpo.label_smoothing = 0.0  # cDPO / rDPO noise rate
    c.dpo.precompute_reference = True  # reference log-probs in one pass before training
    c.dpo.simpo_gamma = 0.5  # SimPO margin γ
    c.dpo.orpo_beta = 0.1  # ORPO odds-ratio weight
    c.dpo.share_prompt = True  # one forward per pair, [prompt | chosen | rejected]
    return c
