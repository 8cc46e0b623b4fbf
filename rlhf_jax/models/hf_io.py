"""HF checkpoints in and out: config.json + safetensors ⇄ our NNX models, without torch.

    load_pretrained(dir)          *ForCausalLM checkpoint → CausalLM
    load_scalar_model(dir, kind)  LM or *ForSequenceClassification checkpoint → ScalarModel
    has_score_head(dir)           whether the checkpoint is a sequence classifier
    save_pretrained(model, dir)   CausalLM → *ForCausalLM; reward ScalarModel →
                                  *ForSequenceClassification (num_labels=1)

Each HF tensor is described once by a `_Rule`: its name, its shape, the parameters of ours it
holds, and the two reshapes between them, so import and export cannot drift apart. HF linear
weights are (out, in); GPT-2's Conv1D weights are (in, out); GPT-2 fuses q|k|v along the output
and GPT-NeoX interleaves them per head, (H, 3, K) along the output.

Safetensors are read by `tensor_files.TensorFiles` (the `safetensors` numpy backend cannot read
bfloat16).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlhf_jax.models.config import LLAMA_LIKE, ModelConfig, from_hf_dict, to_hf_dict
from rlhf_jax.models.heads import HeadKind, ScalarHead, ScalarModel
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
_PREFIX = {"gpt2": "transformer.", "gpt_neox": "gpt_neox."}  # the Llama-like: "model."
# Non-persistent buffers that older checkpoints saved; they carry no weights.
_IGNORED = re.compile(
    r".*\.(rotary_emb\.inv_freq|attn\.bias|attn\.masked_bias|attention\.bias|attention\.masked_bias)$"
)


# ---------------------------------------------------------------------------------------------
# Tensor rules

ParamPath = tuple  # a parameter path as nnx.to_flat_state gives it, e.g. ("trunk", "embed")
# Rules name layer i's parameters per layer, ("trunk", "layers", i, "attn", "q", "kernel"), as the
# checkpoint does; the model holds them stacked, ("trunk", "layers", "attn", "q", "kernel") with
# layer i at index i of the leading axis. `_layer_paths` maps one onto the other.


@dataclasses.dataclass(frozen=True)
class _Rule:
    hf_name: str
    hf_shape: tuple[int, ...]
    ours: tuple[ParamPath, ...]
    to_ours: Callable[[np.ndarray], tuple[np.ndarray, ...]]
    to_hf: Callable[..., np.ndarray]


def _copy(hf_name, hf_shape, ours, our_shape):
    return _Rule(
        hf_name, tuple(hf_shape), (ours,),
        lambda a: (a.reshape(our_shape),), lambda a: a.reshape(hf_shape),
    )  # fmt: skip


def _linear(hf_name, ours, in_shape, out_shape):
    """An HF nn.Linear weight (out, in) ↔ our kernel (*in_shape, *out_shape)."""
    n_in, n_out = int(np.prod(in_shape)), int(np.prod(out_shape))
    return _Rule(
        hf_name, (n_out, n_in), (ours,),
        lambda a: (a.T.reshape(*in_shape, *out_shape),),
        lambda k: k.reshape(n_in, n_out).T,
    )  # fmt: skip


def _conv1d(hf_name, ours, in_shape, out_shape):
    """A GPT-2 Conv1D weight (in, out) ↔ our kernel (*in_shape, *out_shape)."""
    n_in, n_out = int(np.prod(in_shape)), int(np.prod(out_shape))
    return _copy(hf_name, (n_in, n_out), ours, (*in_shape, *out_shape))


def _trunk_rules(cfg: ModelConfig) -> list[_Rule]:
    d, h, kv, k, f, v = (
        cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
    )  # fmt: skip
    pre = _PREFIX.get(cfg.model_type, "model.")
    t = ("trunk",)
    rules = [_copy(f"{pre}embed_tokens.weight", (v, d), (*t, "embed"), (v, d))]

    def norm(hf, ours):
        out = [_copy(f"{hf}.weight", (d,), (*ours, "scale"), (d,))]
        if cfg.norm == "layer":
            out.append(_copy(f"{hf}.bias", (d,), (*ours, "bias"), (d,)))
        return out

    def bias(hf, ours, shape, enabled):
        return [_copy(hf, (int(np.prod(shape)),), ours, shape)] if enabled else []

    if cfg.model_type in LLAMA_LIKE:
        for i in range(cfg.num_layers):
            hp, op = f"{pre}layers.{i}.", (*t, "layers", i)
            a, m = f"{hp}self_attn.", (*op, "attn")
            for name, n in (("q", h), ("k", kv), ("v", kv)):
                rules.append(_linear(f"{a}{name}_proj.weight", (*m, name, "kernel"), (d,), (n, k)))
                rules += bias(f"{a}{name}_proj.bias", (*m, name, "bias"), (n, k), cfg.qkv_bias)
            rules.append(_linear(f"{a}o_proj.weight", (*m, "o", "kernel"), (h, k), (d,)))
            rules += bias(f"{a}o_proj.bias", (*m, "o", "bias"), (d,), cfg.out_bias)
            if cfg.qk_norm:
                for name in ("q_norm", "k_norm"):
                    rules.append(_copy(f"{a}{name}.weight", (k,), (*m, name, "scale"), (k,)))
            for name, (i_, o_) in (("gate", (d, f)), ("up", (d, f)), ("down", (f, d))):
                hf = f"{hp}mlp.{name}_proj"
                rules.append(_linear(f"{hf}.weight", (*op, "mlp", name, "kernel"), (i_,), (o_,)))
                rules += bias(f"{hf}.bias", (*op, "mlp", name, "bias"), (o_,), cfg.mlp_bias)
            rules += norm(f"{hp}input_layernorm", (*op, "attn_norm"))
            if cfg.post_norms:  # Gemma 3's four norms
                rules += norm(f"{hp}post_attention_layernorm", (*op, "attn_post_norm"))
                rules += norm(f"{hp}pre_feedforward_layernorm", (*op, "mlp_norm"))
                rules += norm(f"{hp}post_feedforward_layernorm", (*op, "mlp_post_norm"))
            else:
                rules += norm(f"{hp}post_attention_layernorm", (*op, "mlp_norm"))
        rules += norm(f"{pre}norm", (*t, "final_norm"))
    elif cfg.model_type == "gpt2":
        rules = [
            _copy(f"{pre}wte.weight", (v, d), (*t, "embed"), (v, d)),
            _copy(f"{pre}wpe.weight", (cfg.max_position_embeddings, d), (*t, "pos_embed"),
                  (cfg.max_position_embeddings, d)),
        ]  # fmt: skip
        for i in range(cfg.num_layers):
            hp, op = f"{pre}h.{i}.", (*t, "layers", i)
            m = (*op, "attn")
            qkv = tuple((*m, name, "kernel") for name in "qkv")
            qkv_b = tuple((*m, name, "bias") for name in "qkv")
            rules += [
                _Rule(f"{hp}attn.c_attn.weight", (d, 3 * h * k), qkv,
                      lambda a: tuple(x.reshape(d, h, k) for x in np.split(a, 3, axis=1)),
                      lambda *ks: np.concatenate([x.reshape(d, h * k) for x in ks], axis=1)),
                _Rule(f"{hp}attn.c_attn.bias", (3 * h * k,), qkv_b,
                      lambda a: tuple(x.reshape(h, k) for x in np.split(a, 3)),
                      lambda *bs: np.concatenate([x.reshape(-1) for x in bs])),
                _conv1d(f"{hp}attn.c_proj.weight", (*m, "o", "kernel"), (h, k), (d,)),
                _copy(f"{hp}attn.c_proj.bias", (d,), (*m, "o", "bias"), (d,)),
                _conv1d(f"{hp}mlp.c_fc.weight", (*op, "mlp", "fc", "kernel"), (d,), (f,)),
                _copy(f"{hp}mlp.c_fc.bias", (f,), (*op, "mlp", "fc", "bias"), (f,)),
                _conv1d(f"{hp}mlp.c_proj.weight", (*op, "mlp", "proj", "kernel"), (f,), (d,)),
                _copy(f"{hp}mlp.c_proj.bias", (d,), (*op, "mlp", "proj", "bias"), (d,)),
            ]  # fmt: skip
            rules += norm(f"{hp}ln_1", (*op, "attn_norm")) + norm(f"{hp}ln_2", (*op, "mlp_norm"))
        rules += norm(f"{pre}ln_f", (*t, "final_norm"))
    elif cfg.model_type == "gpt_neox":
        rules = [_copy(f"{pre}embed_in.weight", (v, d), (*t, "embed"), (v, d))]
        for i in range(cfg.num_layers):
            hp, op = f"{pre}layers.{i}.", (*t, "layers", i)
            m = (*op, "attn")
            qkv = tuple((*m, name, "kernel") for name in "qkv")
            rules.append(_Rule(
                f"{hp}attention.query_key_value.weight", (3 * h * k, d), qkv,
                lambda a: tuple(a.reshape(h, 3, k, d)[:, j].transpose(2, 0, 1) for j in range(3)),
                lambda *ks: np.stack([x.transpose(1, 2, 0) for x in ks], axis=1).reshape(-1, d),
            ))  # fmt: skip
            if cfg.qkv_bias:
                rules.append(_Rule(
                    f"{hp}attention.query_key_value.bias", (3 * h * k,),
                    tuple((*m, name, "bias") for name in "qkv"),
                    lambda a: tuple(a.reshape(h, 3, k)[:, j] for j in range(3)),
                    lambda *bs: np.stack(bs, axis=1).reshape(-1),
                ))  # fmt: skip
            rules.append(_linear(f"{hp}attention.dense.weight", (*m, "o", "kernel"), (h, k), (d,)))
            rules += bias(f"{hp}attention.dense.bias", (*m, "o", "bias"), (d,), cfg.out_bias)
            for hf, ours, i_, o_ in (
                ("dense_h_to_4h", "fc", d, f),
                ("dense_4h_to_h", "proj", f, d),
            ):
                p = (*op, "mlp", ours)
                rules.append(_linear(f"{hp}mlp.{hf}.weight", (*p, "kernel"), (i_,), (o_,)))
                rules += bias(f"{hp}mlp.{hf}.bias", (*p, "bias"), (o_,), cfg.mlp_bias)
            rules += norm(f"{hp}input_layernorm", (*op, "attn_norm"))
            rules += norm(f"{hp}post_attention_layernorm", (*op, "mlp_norm"))
        rules += norm(f"{pre}final_layer_norm", (*t, "final_norm"))
    return rules


def _lm_head_rule(cfg: ModelConfig) -> list[_Rule]:
    if cfg.tie_embeddings:
        return []
    name = "embed_out.weight" if cfg.model_type == "gpt_neox" else "lm_head.weight"
    return [_linear(name, ("lm_head", "kernel"), (cfg.hidden_size,), (cfg.vocab_size,))]


def _score_rule(cfg: ModelConfig) -> _Rule:
    d = cfg.hidden_size
    return _copy("score.weight", (1, d), ("head", "kernel"), (d,))


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


def _fill(module, rules: list[_Rule], ckpt: TensorFiles):
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
    model = _fill(abstract, _trunk_rules(cfg) + _lm_head_rule(cfg), ckpt)
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
    rules = _trunk_rules(cfg) + ([_score_rule(cfg)] if use_score else [])
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
        rules, arch = _trunk_rules(cfg) + _lm_head_rule(cfg), causal_arch
    elif isinstance(model, ScalarModel):
        if model.head.bias is not None:
            raise ValueError(
                "only reward models (head without bias) export to HF: a critic's value head has "
                "a bias that *ForSequenceClassification heads lack"
            )
        rules, arch = [*_trunk_rules(cfg), _score_rule(cfg)], classifier_arch
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
