"""Reward model: Bradley–Terry on pairs (or InstructGPT's K-wise loss) on a scalar head.

Chosen and rejected go through ONE forward pass: with ``share_prompt`` (the phases' default) and
the response-window keys, as one packed row per pair with the prompt computed once
(`rlhf_jax.training.pairs`); else concatenated on the batch axis. The reward is read at each
sequence's last valid token (``ScalarModel.score``) or averaged over its response.

Pair batch keys (right-padded to one bucket length T):
    chosen_tokens_BxT, chosen_positions_BxT, chosen_attn_mask_BxT,
    rejected_tokens_BxT, rejected_positions_BxT, rejected_attn_mask_BxT,
    example_mask_B (1 for real pairs, 0 for rows that only pad the batch); optional margin_B.
Ranking batch keys: tokens_BxKxT, positions_BxKxT, attn_mask_BxKxT, ranks_BxK, mask_BxK.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from rlhf_jax import losses
from rlhf_jax.models import at_last_valid
from rlhf_jax.training import pairs

POOLINGS = ("last", "mean")


def pool_scores(per_token_NxT, attn_mask_NxT, response_mask_NxT, pooling: str):
    """One reward per sequence from per-token scores.

    last: the score at the last valid token (the standard reward model; HF's
          ``*ForSequenceClassification`` reads the same place);
    mean: the mean score over the response tokens — a per-token judgement averaged, easier to
          learn when the reward is a sum of local judgements (the synthetic task's gold is).
    """
    if pooling == "last":
        return at_last_valid(per_token_NxT, attn_mask_NxT)
    if pooling == "mean":
        return losses.masked_mean(per_token_NxT, response_mask_NxT.astype(bool), axis=-1)
    raise ValueError(f"reward pooling={pooling!r}; expected one of {POOLINGS}")


def score_sequences(
    graphdef,
    params,
    rest,
    tokens_NxT,
    positions_NxT,
    attn_mask_NxT,
    response_mask_NxT=None,
    pooling: str = "last",
):
    model = nnx.merge(graphdef, params, rest)
    per_token = model(tokens_NxT, positions_BxT=positions_NxT, attn_mask_BxT=attn_mask_NxT)
    return pool_scores(per_token, attn_mask_NxT, response_mask_NxT, pooling)


def concat_pairs(batch, field: str):
    return jnp.concatenate([batch[f"chosen_{field}"], batch[f"rejected_{field}"]], axis=0)


def pair_scores(graphdef, params, rest, batch, *, pooling="last", share_prompt=False):
    """(chosen_B, rejected_B, extra metrics): the rewards of both sides of each pair.

    ``share_prompt`` with the response-window keys in ``batch``: one packed forward per pair,
    the prompt computed once (`rlhf_jax.training.pairs`); else chosen and rejected as rows of
    one forward, concatenated on the batch axis. With ``share_prompt`` the extra metrics hold
    ``unshared_prompts`` (0 when the batch has no window and runs unpacked).
    """
    if share_prompt and pairs.can_pack(batch):
        packed = pairs.pack(batch)
        model = nnx.merge(graphdef, params, rest)
        per_token = model(
            packed["tokens_BxL"],
            positions_BxT=packed["positions_BxL"],
            attn_mask_BxT=packed["attn_mask_BxL"],
            mask_BxTxT=packed["mask_BxLxL"],
        )
        if pooling == "last":
            side = lambda s: jnp.take_along_axis(per_token, packed[f"{s}_scores_at_B"][:, None], 1)
            chosen, rejected = side("chosen")[:, 0], side("rejected")[:, 0]
        elif pooling == "mean":
            side = lambda s: losses.masked_mean(per_token, packed[f"{s}_response_BxL"], axis=-1)
            chosen, rejected = side("chosen"), side("rejected")
        else:
            raise ValueError(f"reward pooling={pooling!r}; expected one of {POOLINGS}")
        return chosen, rejected, {"unshared_prompts": packed["unshared_prompts"]}
    scores = score_sequences(
        graphdef,
        params,
        rest,
        concat_pairs(batch, "tokens_BxT"),
        concat_pairs(batch, "positions_BxT"),
        concat_pairs(batch, "attn_mask_BxT"),
        concat_pairs(batch, "loss_mask_BxT") if pooling != "last" else None,
        pooling,
    )
    num_pairs = batch["chosen_tokens_BxT"].shape[0]
    # The same metrics whichever path a batch takes (a batch without a window cannot pack).
    extra = {"unshared_prompts": jnp.zeros((), jnp.float32)} if share_prompt else {}
    return scores[:num_pairs], scores[num_pairs:], extra


def reward_pair_loss(
    params,
    frozen,
    batch,
    rng,
    *,
    graphdef,
    label_smoothing=0.0,
    center_coef=0.0,
    pooling="last",
    share_prompt=False,
):
    """Bradley–Terry loss of one batch of pairs; weight = number of real pairs.
    ``share_prompt``: one packed forward per pair (see `pair_scores`)."""
    del rng
    chosen_B, rejected_B, extra = pair_scores(
        graphdef, params, frozen["rest"], batch, pooling=pooling, share_prompt=share_prompt
    )
    mask_B = batch["example_mask_B"]
    loss, metrics = losses.bradley_terry_loss(
        chosen_B,
        rejected_B,
        margin=batch.get("margin_B"),
        label_smoothing=label_smoothing,
        center_coef=center_coef,
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


def reward_ranking_loss(params, frozen, batch, rng, *, graphdef, pooling="last"):
    """K-wise ranking loss; weight = number of prompts with at least one ranked pair."""
    del rng
    b, k, t = batch["tokens_BxKxT"].shape
    flat = lambda x: x.reshape(b * k, t)
    scores = score_sequences(
        graphdef,
        params,
        frozen["rest"],
        flat(batch["tokens_BxKxT"]),
        flat(batch["positions_BxKxT"]),
        flat(batch["attn_mask_BxKxT"]),
        flat(batch["loss_mask_BxKxT"]) if pooling != "last" else None,
        pooling,
    ).reshape(b, k)
    loss, metrics = losses.ranking_loss(scores, batch["ranks_BxK"], batch["mask_BxK"])
    mask = batch["mask_BxK"].astype(bool)
    has_pairs = jnp.sum(mask, axis=1) >= 2
    metrics = dict(metrics, reward_mean=losses.masked_mean(scores, mask))
    return loss, (jnp.sum(has_pairs, dtype=jnp.float32), metrics)
