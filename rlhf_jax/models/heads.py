"""Scalar heads on the transformer trunk: reward models and value functions (critics).

A scalar head maps each final hidden state to one number, s_t = wᵀh_t (+ b):

- reward model r(x, y): s read at the last valid token of prompt+response (Stiennon et al. 2020,
  Ouyang et al. 2022). The head has no bias, as HF's `*ForSequenceClassification` heads, so a
  trained reward model exports to HF unchanged (Bradley–Terry is invariant to a bias anyway).
  Init N(0, 1/√(D+1)) (Huang et al. 2024, "The N+ implementation details of RLHF with PPO").
- value function V(s_t): s at every token. Init w = 0, b = 0, so the first advantages are the
  returns themselves rather than noise from a random head.

Two ways to hold a critic, both supported by PPO (`ppo.value_model`):
- a `ScalarHead(kind="value")` alone on the policy's final hidden states (one trunk; the value
  loss then also moves the policy's features);
- `ScalarModel(kind="value")`: a separate critic with its own trunk, what the TL;DR PPO
  reproductions found more stable; typically initialised from the reward model's trunk or
  from the SFT LM's.

A sequence's reward is pooled from the per-token scores (`pool_scores`): at the last valid
token (the standard; what HF's `*ForSequenceClassification` reads) or averaged over the response.

Letters: B batch, T time, D model width, V vocabulary.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from rlhf_jax.losses import last_valid_index, masked_mean
from rlhf_jax.models.config import ModelConfig
from rlhf_jax.models.transformer import Transformer

HeadKind = Literal["reward", "value"]
POOLINGS = ("last", "mean")


class ScalarHead(nnx.Module):
    """s_BxT = h_BxTxD · w (+ b), in float32."""

    def __init__(self, config: ModelConfig, *, kind: HeadKind, rngs: nnx.Rngs):
        d = config.hidden_size
        pdt = jnp.dtype(config.param_dtype)
        if kind == "reward":
            kernel = jax.random.normal(rngs.params(), (d,), pdt) / jnp.sqrt(d + 1.0).astype(pdt)
            self.bias = None
        elif kind == "value":
            kernel = jnp.zeros((d,), pdt)
            self.bias = nnx.Param(jnp.zeros((), pdt), out_sharding=(), eager_sharding=False)
        else:
            raise ValueError(f"kind must be 'reward' or 'value'; got {kind!r}")
        self.kernel = nnx.Param(kernel, out_sharding=("embed",), eager_sharding=False)
        self.kind = kind

    def __call__(self, h_BxTxD):
        s = jnp.einsum(
            "btd,d->bt", h_BxTxD.astype(jnp.float32), self.kernel[...].astype(jnp.float32)
        )
        if self.bias is not None:
            s = s + self.bias[...].astype(jnp.float32)
        return s


def at_last_valid(values_BxT, mask_BxT):
    """values[b, last valid t] for each row, e.g. the sequence reward from per-token scores.
    Works for left or right padding alike (0 for a row with no valid token)."""
    idx_B = last_valid_index(mask_BxT.astype(bool))
    return jnp.take_along_axis(values_BxT, idx_B[:, None], axis=1)[:, 0]


def pool_scores(per_token_BxT, attn_mask_BxT, response_mask_BxT=None, pooling: str = "last"):
    """One reward per sequence (B,) from per-token scores.

    last: the score at the last valid token (the standard reward model);
    mean: the mean score over the response tokens (``response_mask_BxT``) — a per-token
          judgement averaged, easier to learn when the reward is a sum of local judgements.
    """
    if pooling == "last":
        return at_last_valid(per_token_BxT, attn_mask_BxT)
    if pooling == "mean":
        if response_mask_BxT is None:
            raise ValueError("reward pooling='mean' needs the response mask")
        return masked_mean(per_token_BxT, response_mask_BxT.astype(bool), axis=-1)
    raise ValueError(f"reward pooling={pooling!r}; expected one of {POOLINGS}")


class ScalarModel(nnx.Module):
    """Trunk + scalar head: a reward model (`kind="reward"`) or a separate critic ("value")."""

    def __init__(
        self,
        config: ModelConfig,
        *,
        kind: HeadKind,
        rngs: nnx.Rngs,
        trunk: Transformer | None = None,
    ):
        """`trunk`, when given, is used as is (e.g. a clone of an LM's or reward model's)."""
        self.config = config
        self.trunk = trunk if trunk is not None else Transformer(config, rngs=rngs)
        self.head = ScalarHead(config, kind=kind, rngs=rngs)

    @classmethod
    def from_trunk(cls, trunk: Transformer, *, kind: HeadKind, rngs: nnx.Rngs) -> ScalarModel:
        """A new scalar model on a copy of `trunk` (an LM's `.trunk` or a reward model's) with a
        freshly initialised head of `kind`. Copying keeps the source model usable on its own."""
        return cls(trunk.config, kind=kind, rngs=rngs, trunk=nnx.clone(trunk))

    def __call__(self, tokens_BxT, *, positions_BxT, attn_mask_BxT, mask_BxTxT=None):
        """Per-token scalars (B, T): values for a critic, scores for a reward model
        (``mask_BxTxT``: an explicit attention mask, as `Transformer`)."""
        h, _ = self.trunk(
            tokens_BxT,
            positions_BxT=positions_BxT,
            attn_mask_BxT=attn_mask_BxT,
            mask_BxTxT=mask_BxTxT,
        )
        return self.head(h)

    def score(
        self,
        tokens_BxT,
        *,
        positions_BxT,
        attn_mask_BxT,
        response_mask_BxT=None,
        pooling: str = "last",
    ):
        """One score per sequence (B,), pooled from the per-token scores (`pool_scores`): by
        default read at the last valid token of `attn_mask_BxT`."""
        s = self(tokens_BxT, positions_BxT=positions_BxT, attn_mask_BxT=attn_mask_BxT)
        return pool_scores(s, attn_mask_BxT, response_mask_BxT, pooling)
