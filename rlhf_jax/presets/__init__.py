"""Config presets for the offline phases, shared by ``configs/sft.py``, ``reward.py``, ``dpo.py``.

Variants (the ``arg`` of ``get_config``):
  smoke          a 2-layer Llama-style model from scratch on ``smoke_data/`` — runs on a
                 laptop CPU in seconds; what the tests use
  gpt2           GPT-2 (124M) from a local HF checkpoint, on TL;DR summarisation
  pythia1b_tldr  Pythia-1B (GPT-NeoX), the TL;DR RLHF reproductions' model (Huang et al. 2024)
  qwen05b_hh     Qwen2.5-0.5B on Anthropic HH (helpful-base), conversational
Real checkpoints are read from local directories (``model.hf_path``); fetch one first, e.g.
``huggingface-cli download EleutherAI/pythia-1b-deduped --local-dir checkpoints/pythia-1b``.
Datasets default to hub names (``trl-lib/...``), which need network access; any local JSONL or
Parquet file in a supported format works too (``--config.data.path=...``).

The smoke data (``smoke_data/``: a word-level tokenizer, ``sft.jsonl``, ``prefs.jsonl``, written
by ``experiments/make_smoke_data.py``) ships inside the package, so the smoke preset works from
an installed wheel.
"""

from __future__ import annotations

import pathlib

import ml_collections

from rlhf_jax import checkpoint as ckpt_lib
from rlhf_jax import data as data_lib
from rlhf_jax import models
from rlhf_jax.placement import ModelSource
from rlhf_jax.training.config import config_dict
from rlhf_jax.training.dpo import DPOPhaseConfig
from rlhf_jax.training.optimizer import OptimizerConfig
from rlhf_jax.training.phase import PhaseConfig
from rlhf_jax.training.reward import RewardLossConfig, RewardPhaseConfig

SMOKE_DATA = pathlib.Path(__file__).resolve().parent / "smoke_data"
_CONFIG_TYPES = {"sft": PhaseConfig, "reward": RewardPhaseConfig, "dpo": DPOPhaseConfig}

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


def phase_config(phase: str, arg: str | None) -> ml_collections.ConfigDict:
    """The ConfigDict of ``phase`` ('sft', 'reward', 'dpo') for variant ``arg``.

    Built from the phase's typed config (`training.phase.PhaseConfig` and its `RewardPhaseConfig`
    / `DPOPhaseConfig`), where every field is documented; a variant sets only what it changes.
    """
    variant = arg or "smoke"
    if variant not in _PRESETS:
        raise ValueError(f"unknown config variant {variant!r}; expected one of {VARIANTS}")
    if phase not in _CONFIG_TYPES:
        raise ValueError(f"unknown phase {phase!r}; expected one of {sorted(_CONFIG_TYPES)}")
    p = _PRESETS[variant]
    steps = p["steps"][phase]
    model = dict(p["model"])
    if "init" in model:
        model["init"] = models.ModelConfig(**model["init"])
    extra = {}
    if phase == "reward":
        extra["reward"] = RewardLossConfig(center_coef=0.0 if variant == "smoke" else 0.01)
    config = _CONFIG_TYPES[phase](
        run_dir=f"runs/{variant}/{phase}",
        model=ModelSource(**model, dtype=p["dtype"]),
        data=data_lib.DataConfig(
            path=p["data"]["sft" if phase == "sft" else "pref"],
            bucket_lengths=p["buckets"],
            batch_size=p["batch_size"],
            eval_fraction=0.0 if phase == "sft" else 0.1,
        ),
        # Warm-up (5%) and checkpoint cadence (four per phase) follow total_steps.
        optimizer=OptimizerConfig(learning_rate=p["lr"][phase], warmup_steps=None),
        checkpoint=ckpt_lib.CheckpointConfig(keep=2),
        total_steps=steps,
        **extra,
    )
    return config_dict(config)
