"""HF checkpoints in and out: config.json + safetensors ⇄ our NNX models, without torch.

    load_pretrained(dir)          *ForCausalLM checkpoint → CausalLM
    load_scalar_model(dir, kind)  LM or *ForSequenceClassification checkpoint → ScalarModel
    has_score_head(dir)           whether the checkpoint is a sequence classifier
    save_pretrained(model, dir)   CausalLM → *ForCausalLM; reward ScalarModel →
                                  *ForSequenceClassification (num_labels=1)

Each HF tensor is described once by a `Rule`: its name, its shape, the parameters of ours it
holds, and the two reshapes between them, so import and export cannot drift apart. HF linear
weights are (out, in); GPT-2's Conv1D weights are (in, out); GPT-2 fuses q|k|v along the output
and GPT-NeoX interleaves them per head, (H, 3, K) along the output.

Safetensors are read by `tensor_files.TensorFiles` (the `safetensors` numpy backend cannot read
bfloat16).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlhf_jax.models.config import ModelConfig
from rlhf_jax.models.heads import HeadKind, ScalarHead, ScalarModel
from rlhf_jax.models.hf_config import from_hf_dict
from rlhf_jax.models.hf_export import to_hf_dict
from rlhf_jax.models.hf_rules import ParamPath, Rule, lm_head_rule, score_rule, trunk_rules
from rlhf_jax.models.tensor_files import CheckpointError, TensorFiles, write_tensors
from rlhf_jax.models.transformer import CausalLM

_ARCHITECTURES = {  # model_type → (causal LM class, sequence-classification class)
    "llama": ("LlamaForCausalLM", "LlamaForSequenceClassification"),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2ForSequenceClassification"),
    "qwen3": ("Qwen3ForCausalLM", "Qwen3ForSequenceClassification"),
    "mistral": ("MistralForCausalLM", "MistralForSequenceClassification"),
    "gemma3_text": ("Gemma3ForCausalLM", "Gemma3TextForSequenceClassification"),
    "gpt2": ("GPT2LMHeadModel", "GPT2ForSequenceClassification"),
    "gpt_neox": ("GPTNeoXForCausalLM", "GPTNeoXForSequenceClassification"),
}
# Non-persistent buffers that older checkpoints saved; they carry no weights.
_IGNORED = re.compile(
    r".*\.(rotary_emb\.inv_freq|attn\.bias|attn\.masked_bias|attention\.bias|attention\.masked_bias)$"
)


# ---------------------------------------------------------------------------------------------
# Loading


def load_config(path: str | os.PathLike, **overrides) -> tuple[ModelConfig, dict]:
    """(ModelConfig, raw config.json dict) from an HF directory; `overrides` replace fields."""
    file = Path(path).expanduser() / "config.json"
    if not file.parent.is_dir():
        raise CheckpointError(
            f"checkpoint directory not found: {path} (a local HF checkpoint: config.json + "
            "safetensors; fetch a hub model first, e.g. `huggingface-cli download NAME "
            "--local-dir DIR`)"
        )
    if not file.exists():
        raise CheckpointError(f"{file} does not exist: {path} is not an HF checkpoint directory")
    raw = json.loads(file.read_text())
    return from_hf_dict(raw, source=str(file), **overrides), raw


def _layer_paths(path: ParamPath, var) -> list[ParamPath] | None:
    """The per-layer paths of a stacked parameter (its first axis named 'layers'), else None."""
    names = var.get_metadata().get("out_sharding") or ()
    if not names or names[0] != "layers":
        return None
    at = path.index("layers") + 1
    return [(*path[:at], i, *path[at:]) for i in range(var.shape[0])]


def _fill(module, rules: list[Rule], ckpt: TensorFiles):
    """Replaces parameters of `module` by the checkpoint's tensors, as `rules` say.

    Parameters no rule names must already be concrete (e.g. a freshly initialised head); the
    abstract ones (from `nnx.eval_shape`) must all be filled.
    """
    graphdef, state = nnx.split(module)
    flat = dict(nnx.to_flat_state(state))
    # Layer i's tensor goes straight into slot i of its stacked parameter's buffer.
    slot = {}
    for path, var in flat.items():
        for i, layer_path in enumerate(_layer_paths(path, var) or ()):
            slot[layer_path] = (path, i)
    values, filled = {}, {}
    for rule in rules:
        # Some GPT-2 checkpoints on the hub (e.g. `gpt2` itself) store names without the
        # `transformer.` prefix.
        bare = (rule.hf_name.removeprefix("transformer."),)
        arrays = rule.to_ours(ckpt.get(rule.hf_name, rule.hf_shape, alternatives=bare))
        for path, arr in zip(rule.ours, arrays, strict=True):
            if path not in slot:
                values[path] = arr
                continue
            stacked, i = slot[path]
            var = flat[stacked]
            if stacked not in values:
                values[stacked] = np.empty(var.shape, np.dtype(var.dtype))
                filled[stacked] = set()
            if tuple(arr.shape) != tuple(var.shape[1:]):  # a rule-table bug, not a user error
                raise AssertionError(f"rule for {path} produced {arr.shape}, expected {var.shape}")
            values[stacked][i] = arr
            filled[stacked].add(i)
    for path, layers in filled.items():
        if len(layers) != flat[path].shape[0]:
            missing = sorted(set(range(flat[path].shape[0])) - layers)
            raise AssertionError(f"no checkpoint rule fills layers {missing} of {path}")
    new_flat = []
    for path, var in flat.items():
        if path in values:
            arr = values[path]
            if tuple(arr.shape) != tuple(var.shape):  # a rule-table bug, not a user error
                raise AssertionError(f"rule for {path} produced {arr.shape}, expected {var.shape}")
            var = var.replace(jnp.asarray(arr, dtype=var.dtype))
        elif isinstance(var.get_value(), jax.ShapeDtypeStruct):
            raise AssertionError(f"no checkpoint rule fills parameter {path}")
        new_flat.append((path, var))
    return nnx.merge(graphdef, nnx.from_flat_state(new_flat))


def _warn_unused(ckpt: TensorFiles, expected_unused: tuple[str, ...] = ()):
    unused = [
        n
        for n in ckpt.entries
        if n not in ckpt.used and not _IGNORED.match(n) and n not in expected_unused
    ]
    if unused:
        warnings.warn(
            f"{ckpt.directory}: {len(unused)} tensors were not used, e.g. {sorted(unused)[:5]}",
            stacklevel=3,
        )


def load_pretrained(
    path: str | os.PathLike, *, dtype: str = "float32", param_dtype: str = "float32"
) -> CausalLM:
    """A `CausalLM` with the weights of the HF checkpoint in directory `path`.

    `dtype` is the compute dtype, `param_dtype` the storage dtype of the parameters (weights are
    cast from whatever the checkpoint holds). Raises `CheckpointError` naming the file or tensor
    when something is missing or mis-shaped, ValueError naming the field for an unsupported
    config.
    """
    cfg, _ = load_config(path, dtype=dtype, param_dtype=param_dtype)
    ckpt = TensorFiles(Path(path))
    abstract = nnx.eval_shape(lambda: CausalLM(cfg, rngs=nnx.Rngs(0)))
    model = _fill(abstract, trunk_rules(cfg) + lm_head_rule(cfg), ckpt)
    # A tied checkpoint may still carry a copy of the head; a classifier carries `score`.
    _warn_unused(ckpt, ("lm_head.weight", "score.weight"))
    return model


def has_score_head(path: str | os.PathLike) -> bool:
    """Whether the HF checkpoint in `path` carries a `score` head (a sequence classifier)."""
    return TensorFiles(Path(path)).find("score.weight") is not None


def load_scalar_model(
    path: str | os.PathLike,
    *,
    kind: HeadKind,
    dtype: str = "float32",
    param_dtype: str = "float32",
    fresh_head: bool = False,
    seed: int = 0,
) -> ScalarModel:
    """A reward model or critic from an HF LM or `*ForSequenceClassification` checkpoint.

    The trunk comes from the checkpoint. The head is the checkpoint's `score` (num_labels must
    be 1) when it has one and `fresh_head` is False — e.g. a critic initialised from a trained
    reward model; otherwise it is initialised for `kind` from `seed` (see `heads.py`).
    """
    cfg, _ = load_config(path, dtype=dtype, param_dtype=param_dtype)
    ckpt = TensorFiles(Path(path))
    use_score = not fresh_head and ckpt.find("score.weight") is not None
    abstract = nnx.eval_shape(lambda: ScalarModel(cfg, kind=kind, rngs=nnx.Rngs(0)))
    # Only the trunk stays abstract to be filled; the head is small and built for real, since
    # its init depends on `seed` (and a critic's bias is not in a classifier checkpoint).
    abstract.head = ScalarHead(cfg, kind=kind, rngs=nnx.Rngs(seed))
    rules = trunk_rules(cfg) + ([score_rule(cfg)] if use_score else [])
    model = _fill(abstract, rules, ckpt)
    _warn_unused(ckpt, ("lm_head.weight", "embed_out.weight", "score.weight"))
    return model


# ---------------------------------------------------------------------------------------------
# Saving


def save_pretrained(
    model: CausalLM | ScalarModel,
    path: str | os.PathLike,
    *,
    tokenizer=None,
    dtype: str | None = None,
    max_shard_bytes: int | None = None,
) -> None:
    """Writes config.json + safetensors that `transformers` loads: a `CausalLM` as
    `*ForCausalLM`, a reward `ScalarModel` as `*ForSequenceClassification` with num_labels=1.

    `dtype` is the stored dtype (default: the model's `param_dtype`). With `max_shard_bytes`
    the weights are split into `model-0000i-of-0000n.safetensors` shards plus
    `model.safetensors.index.json`. `tokenizer` (an HF tokenizer), when given, is saved beside.

    HF's sequence-classification heads read the score at the rightmost token that is not
    `pad_token_id`; ours read it at the last token of the attention mask. They agree unless the
    pad id also occurs as a real final token (e.g. pad = EOS and the response ends with EOS).
    """
    cfg: ModelConfig = model.config
    causal_arch, classifier_arch = _ARCHITECTURES[cfg.model_type]
    extra: dict = {}
    if isinstance(model, CausalLM):
        rules, arch = trunk_rules(cfg) + lm_head_rule(cfg), causal_arch
    elif isinstance(model, ScalarModel):
        if model.head.bias is not None:
            raise ValueError(
                "only reward models (head without bias) export to HF: a critic's value head has "
                "a bias that *ForSequenceClassification heads lack"
            )
        rules, arch = [*trunk_rules(cfg), score_rule(cfg)], classifier_arch
        extra = {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}
    else:
        raise TypeError(f"cannot export {type(model).__name__}; expected CausalLM or ScalarModel")
    out_dtype = jnp.dtype(dtype or cfg.param_dtype)
    flat = {}
    for p, var in nnx.to_flat_state(nnx.state(model)):
        value = np.asarray(var.get_value())
        layers = _layer_paths(p, var)
        flat.update(zip(layers, value, strict=True) if layers else [(p, value)])
    tensors = {}
    for rule in rules:
        t = np.asarray(rule.to_hf(*[flat[p] for p in rule.ours]))
        if t.shape != rule.hf_shape:
            raise AssertionError(f"{rule.hf_name}: produced {t.shape}, expected {rule.hf_shape}")
        tensors[rule.hf_name] = np.ascontiguousarray(t.astype(out_dtype))

    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    config = to_hf_dict(cfg.replace(param_dtype=str(out_dtype)), architecture=arch) | extra
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    write_tensors(directory, tensors, max_shard_bytes=max_shard_bytes)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
