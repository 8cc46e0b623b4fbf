"""Reward model: Bradley–Terry on pairs (or InstructGPT's K-wise loss) on a scalar head.

Chosen and rejected go through ONE forward pass (`pairs.forward`): with ``share_prompt`` (the
default) and the response-window keys, one packed row per pair with the prompt computed once;
else concatenated on the batch axis. The reward is read at each sequence's last valid token or
averaged over its response (``pooling``, `rlhf_jax.models.pool_scores`).

Pair batch keys (right-padded to one bucket length T):
    chosen_tokens_BxT, chosen_positions_BxT, chosen_attn_mask_BxT,
    rejected_tokens_BxT, rejected_positions_BxT, rejected_attn_mask_BxT,
    example_mask_B (1 for real pairs, 0 for rows that only pad the batch); optional margin_B,
    and label_B (soft labels P(chosen ≻ rejected), when the data has chosen_probability).
Ranking batch keys: tokens_BxKxT, positions_BxKxT, attn_mask_BxKxT, ranks_BxK, mask_BxK.

The phase starts from an LM (the SFT policy's trunk, a fresh head) or a reward model.
"""

from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp
from flax import nnx

from rlhf_jax import losses, models
from rlhf_jax.models import lora
from rlhf_jax.training import pairs
from rlhf_jax.training.phase import Phase, PhaseConfig, PhaseInputs, PhaseParts


@dataclasses.dataclass(frozen=True, kw_only=True)
class RewardLossConfig:
    label_smoothing: float = 0.0  # probability a label is wrong (conservative Bradley–Terry)
    center_coef: float = 0.0  # reward-centering penalty coef · (r_c + r_r)²
    pooling: str = "last"  # sequence reward: "last" valid token (HF-exportable), or "mean"
    # Pairs run as one packed row [prompt | chosen | rejected], the prompt computed once
    # (`rlhf_jax.training.pairs`; needs data.response_window); same results, fewer FLOPs.
    share_prompt: bool = True

    def __post_init__(self):
        if self.pooling not in models.POOLINGS:
            raise ValueError(f"reward.pooling={self.pooling!r}; expected one of {models.POOLINGS}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RewardPhaseConfig(PhaseConfig):
    reward: RewardLossConfig = dataclasses.field(default_factory=RewardLossConfig)


def pair_scores(
    graphdef, params, rest, batch, *, pooling="last", share_prompt=False, dropout_key=None
):
    """(chosen_B, rejected_B, extra metrics): the rewards of both sides of each pair, from one
    forward (`pairs.forward`). With ``share_prompt`` the extra metrics hold
    ``unshared_prompts`` (0 when the batch has no window and runs unpacked). ``dropout_key``:
    the adapters' dropout (`lora.with_dropout`)."""
    model = lora.with_dropout(nnx.merge(graphdef, params, rest), dropout_key)
    apply = lambda t, p, a, m: model(t, positions_BxT=p, attn_mask_BxT=a, mask_BxTxT=m)
    fwd = pairs.forward(apply, batch, share_prompt=share_prompt)
    if pooling == "last":
        chosen, rejected = pairs.last_token(fwd)
    elif pooling == "mean":
        chosen, rejected = pairs.response_mean(fwd)
    else:
        raise ValueError(f"reward pooling={pooling!r}; expected one of {models.POOLINGS}")
    extra = {} if fwd.unshared_prompts is None else {"unshared_prompts": fwd.unshared_prompts}
    return chosen, rejected, extra


def reward_pair_loss(params, frozen, batch, rng, *, graphdef, config: RewardLossConfig):
    """Bradley–Terry loss of one batch of pairs; weight = number of real pairs."""
    chosen_B, rejected_B, extra = pair_scores(
        graphdef,
        params,
        frozen["rest"],
        batch,
        pooling=config.pooling,
        share_prompt=config.share_prompt,
        dropout_key=rng,
    )
    mask_B = batch["example_mask_B"]
    loss, metrics = losses.bradley_terry_loss(
        chosen_B,
        rejected_B,
        margin=batch.get("margin_B"),
        label_smoothing=config.label_smoothing,
        center_coef=config.center_coef,
        label=batch.get("label_B"),
        mask=mask_B,
    )
    both = jnp.concatenate([chosen_B, rejected_B])
    both_mask = jnp.concatenate([mask_B, mask_B]).astype(bool)
    metrics = dict(
        metrics,
        **extra,
        reward_mean=losses.masked_mean(both, both_mask),
        reward_std=jnp.sqrt(losses.masked_var(both, both_mask)),
    )
    return loss, (jnp.sum(mask_B, dtype=jnp.float32), metrics)


def reward_ranking_loss(params, frozen, batch, rng, *, graphdef, config: RewardLossConfig):
    """K-wise ranking loss; weight = number of prompts with at least one ranked pair."""
    b, k, t = batch["tokens_BxKxT"].shape
    flat = lambda x: x.reshape(b * k, t)
    model = lora.with_dropout(nnx.merge(graphdef, params, frozen["rest"]), rng)
    scores = model.score(
        flat(batch["tokens_BxKxT"]),
        positions_BxT=flat(batch["positions_BxKxT"]),
        attn_mask_BxT=flat(batch["attn_mask_BxKxT"]),
        response_mask_BxT=flat(batch["loss_mask_BxKxT"]) if config.pooling != "last" else None,
        pooling=config.pooling,
    ).reshape(b, k)
    loss, metrics = losses.ranking_loss(scores, batch["ranks_BxK"], batch["mask_BxK"])
    mask = batch["mask_BxK"].astype(bool)
    has_pairs = jnp.sum(mask, axis=1) >= 2
    metrics = dict(metrics, reward_mean=losses.masked_mean(scores, mask))
    return loss, (jnp.sum(has_pairs, dtype=jnp.float32), metrics)


def make_loss(config: RewardLossConfig, data_kind: str, graphdef):
    """The step loss for ``data_kind`` ("preference" pairs or "ranking")."""
    loss = reward_ranking_loss if data_kind == "ranking" else reward_pair_loss
    return functools.partial(loss, graphdef=graphdef, config=config)


def setup(inputs: PhaseInputs) -> PhaseParts:
    config: RewardLossConfig = inputs.config.reward
    return PhaseParts(
        loss_fn=make_loss(config, inputs.train.kind, inputs.model.graphdef),
        meta={"pooling": config.pooling},
    )


PHASE = Phase(
    name="reward",
    config_type=RewardPhaseConfig,
    data_kinds=("preference", "ranking"),
    head="reward",
    setup=setup,
    new_head=True,
)
