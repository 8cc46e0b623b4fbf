"""LoRA adapters out as an HF `peft` adapter (``adapter_config.json`` + its safetensors).

    save_peft_adapter(model, "out/adapter", config=lora_config, base_model="Qwen/Qwen3-0.6B")
    # then, in PyTorch: PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), dir)

peft names layer i's adapters of HF module M ``base_model.model.<M>.lora_A.weight`` (r, in) and
``…lora_B.weight`` (out, r), with the update (α / r)·B·A on M's (out, in) weight; ours are
A: (*in, r), B: (r, *out) per layer of the stack (`lora`). The HF module of each projection
comes from the checkpoint's tensor rules (`hf_rules`), so import, export and adapters agree.
Families whose projections HF fuses (GPT-2's c_attn, GPT-NeoX's query_key_value) have no
per-projection peft module: export those merged (`lora.merge_adapters` + `save_pretrained`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import safetensors.numpy

from rlhf_jax.models.config import LLAMA_LIKE
from rlhf_jax.models.heads import ScalarModel
from rlhf_jax.models.hf_rules import trunk_rules
from rlhf_jax.models.lora import LoraConfig, adapted
from rlhf_jax.models.transformer import CausalLM

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"


def _hf_modules(cfg) -> dict[tuple, str]:
    """Our per-layer kernel path → the HF module holding it (``model.layers.0.mlp.up_proj``)."""
    return {
        rule.ours[0]: rule.hf_name.removesuffix(".weight")
        for rule in trunk_rules(cfg)
        if len(rule.ours) == 1 and rule.ours[0][-1] == "kernel"
    }


def peft_tensors(model: CausalLM | ScalarModel) -> tuple[dict[str, np.ndarray], list[str]]:
    """The adapters of ``model`` under peft's names, and the HF module names they target."""
    cfg = model.config
    if cfg.model_type not in LLAMA_LIKE:
        raise ValueError(
            f"model_type {cfg.model_type!r} fuses its projections in HF checkpoints, so its "
            "adapters have no peft layout; export the merged model instead (save_pretrained)"
        )
    modules = _hf_modules(cfg)
    tensors, targets = {}, set()
    for path, m in adapted(model):
        path = tuple(str(p) for p in path)
        a, b = np.asarray(m.lora_a.get_value()), np.asarray(m.lora_b.get_value())
        stacked = a.ndim > m.n_in + 1
        layers = range(a.shape[0]) if stacked else [None]
        for i in layers:
            ours = (*path[:2], i, *path[2:], "kernel") if stacked else (*path, "kernel")
            if ours not in modules:
                raise ValueError(f"{'.'.join(path)}: no HF module holds this projection")
            hf = modules[ours]
            a_i, b_i = (a[i], b[i]) if stacked else (a, b)
            rank = a_i.shape[-1]
            tensors[f"base_model.model.{hf}.lora_A.weight"] = a_i.reshape(-1, rank).T
            tensors[f"base_model.model.{hf}.lora_B.weight"] = b_i.reshape(rank, -1).T
            targets.add(hf.rsplit(".", 1)[-1])
    if not tensors:
        raise ValueError("the model has no LoRA adapters to export")
    return tensors, sorted(targets)


def save_peft_adapter(
    model: CausalLM | ScalarModel,
    path: str | os.PathLike,
    *,
    config: LoraConfig,
    base_model: str | None = None,
    dtype: str | None = None,
) -> None:
    """Writes ``model``'s adapters as a peft LoRA adapter that `peft.PeftModel.from_pretrained`
    loads onto the base checkpoint ``base_model`` (recorded as ``base_model_name_or_path``).

    A reward model's head is saved beside them as ``score`` (peft's ``modules_to_save``)."""
    tensors, targets = peft_tensors(model)
    task, to_save = "CAUSAL_LM", None
    if isinstance(model, ScalarModel):
        if model.head.bias is not None:
            raise ValueError("only reward models (head without bias) export; a critic's head has")
        task, to_save = "SEQ_CLS", ["score"]
        kernel = np.asarray(model.head.kernel.get_value())
        tensors["base_model.model.score.weight"] = kernel.reshape(1, -1)
    out = {k: np.ascontiguousarray(v.astype(dtype or v.dtype)) for k, v in sorted(tensors.items())}
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    peft_config = {
        "peft_type": "LORA",
        "task_type": task,
        "base_model_name_or_path": base_model,
        "r": config.rank,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "use_rslora": config.rslora,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": False,
        "modules_to_save": to_save,
        "inference_mode": True,
        "init_lora_weights": True,
    }
    (directory / PEFT_CONFIG).write_text(json.dumps(peft_config, indent=2) + "\n")
    safetensors.numpy.save_file(out, directory / PEFT_WEIGHTS, metadata={"format": "pt"})
