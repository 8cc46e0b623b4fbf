"""Causal LMs (Llama, Qwen2, GPT-2, GPT-NeoX/Pythia) in Flax NNX, scalar heads, HF import/export.

Interface used by every phase (training steps, PPO rollouts, evaluation). Letters: B batch,
T time, D width, V vocabulary.

    model = load_pretrained("path/to/hf_dir", dtype="bfloat16", param_dtype="float32")
    graphdef, params = nnx.split(model)          # outside jit
    ...
    model = nnx.merge(graphdef, params)           # inside the jitted step
    logits_BxTxV = model(tokens_BxT, positions_BxT=positions_BxT, attn_mask_BxT=mask_BxT)

- `attn_mask_BxT` is True at real tokens; `positions_BxT` are position ids, usually
  `positions_from_mask(mask_BxT)`, so left- or right-padded rows give the logits of the
  unpadded sequence at their real tokens. Logits are float32 whatever the compute dtype;
  `logits[:, t]` is the distribution of token t + 1.
- `CausalLM.hidden_states(...)` → final-normed (B, T, D); `CausalLM.logits(h)` → (B, T, V).
- `CausalLM.decode(tokens_BxT, positions_BxT=, attn_mask_BxT=, cache=)` → (logits, cache):
  incremental decoding against a preallocated `KVCache` (`model.init_cache(B, S)`), used by
  `rlhf_jax.generation`.
- `ScalarModel` (reward model or separate critic): `model(...)` → per-token scalars (B, T);
  `model.score(...)` → (B,) at each row's last valid token (or averaged over the response,
  `pool_scores`). `ScalarHead` alone is a value head on another model's hidden states.
- Parameters are `nnx.Param`s whose `out_sharding` metadata holds logical axis names
  (`transformer.LOGICAL_AXES`: vocab, embed, heads, kv_heads, head_dim, mlp, positions, layers)
  for the sharding rules to map onto mesh axes. The blocks are one `Block` with a leading
  ``layers`` axis on every parameter (`model.trunk.layers`), applied with `jax.lax.scan`.
- `CausalLM.token_logprobs(h, targets, mask, temperature=, entropy=)` → log-probs (and
  entropies) of the tokens `h` predicts, the LM head run in chunks of rows.
- `lora.add_adapters(model, LoraConfig(...))` puts low-rank adapters on chosen projections;
  `lora.trainable` is the filter of what then trains, `lora.switched_off(model)` computes as
  the base, `lora.merge_adapters(model)` folds them in.
- `load_pretrained` / `load_scalar_model` / `save_pretrained` read and write HF checkpoint
  directories (config.json + safetensors, sharded or not); `load_tokenizer` and
  `encode_prompts` handle tokenizers and chat templates.
"""

from rlhf_jax.models.config import ModelConfig, RopeScaling
from rlhf_jax.models.heads import POOLINGS, ScalarHead, ScalarModel, at_last_valid, pool_scores
from rlhf_jax.models.hf_config import from_hf_dict
from rlhf_jax.models.hf_export import to_hf_dict
from rlhf_jax.models.hf_io import (
    has_score_head,
    load_config,
    load_pretrained,
    load_scalar_model,
    save_pretrained,
)
from rlhf_jax.models.kv_cache import KVCache
from rlhf_jax.models.lora import LoraConfig
from rlhf_jax.models.tensor_files import CheckpointError
from rlhf_jax.models.tokenizer import (
    decode_responses,
    encode_prompts,
    fit_prompts,
    load_tokenizer,
    pad_rows,
)
from rlhf_jax.models.transformer import (
    LOGICAL_AXES,
    CausalLM,
    TokenStats,
    Transformer,
    positions_from_mask,
)

__all__ = [
    "LOGICAL_AXES",
    "POOLINGS",
    "CausalLM",
    "CheckpointError",
    "KVCache",
    "LoraConfig",
    "ModelConfig",
    "RopeScaling",
    "ScalarHead",
    "ScalarModel",
    "TokenStats",
    "Transformer",
    "at_last_valid",
    "decode_responses",
    "encode_prompts",
    "fit_prompts",
    "from_hf_dict",
    "has_score_head",
    "load_config",
    "load_pretrained",
    "load_scalar_model",
    "load_tokenizer",
    "pad_rows",
    "pool_scores",
    "positions_from_mask",
    "save_pretrained",
    "to_hf_dict",
]
