"""DPO and its relatives (IPO, cDPO/rDPO, SLiC-hinge, SimPO, ORPO) on preference pairs.

Policy log-probs of chosen and rejected come from ONE forward pass (one packed row per pair with
the prompt computed once under ``share_prompt``, the phases' default; else concatenated on the
batch axis). The reference log-probs are either precomputed once before training (batch keys
``ref_chosen_logp_B``/``ref_rejected_logp_B``; the reference model is then not kept in memory)
or computed in the step from frozen reference params (``frozen["extra"]``).

Pair batch keys as in ``reward.py``, plus ``chosen_loss_mask_BxT``/``rejected_loss_mask_BxT``
marking the response tokens whose log-probs are summed, and optionally the response-window keys
(``chosen_window_BxW`` etc., one W for both; see ``sft.response_logits``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rlhf_jax import losses
from rlhf_jax.training import pairs
from rlhf_jax.training.reward import concat_pairs
from rlhf_jax.training.sft import response_logits

# Reference-free objectives use length-normalised policy log-probs and no reference model.
REFERENCE_FREE = ("simpo", "orpo")


def pair_logprobs(graphdef, params, rest, batch, *, share_prompt=False):
    """Summed response log-probs and response lengths of chosen and rejected, one forward.

    ``share_prompt`` with the response-window keys in ``batch``: one packed row per pair, the
    prompt computed once (`rlhf_jax.training.pairs`). The third value is, with
    ``share_prompt``, the count of real pairs whose prompts differ (must be 0; 0 when the batch
    has no window and runs unpacked), else None.
    """
    n = batch["chosen_tokens_BxT"].shape[0]
    if share_prompt and pairs.can_pack(batch):
        packed = pairs.pack(batch)
        model = nnx.merge(graphdef, params, rest)
        h = model.hidden_states(
            packed["tokens_BxL"],
            positions_BxT=packed["positions_BxL"],
            attn_mask_BxT=packed["attn_mask_BxL"],
            mask_BxTxT=packed["mask_BxLxL"],
        )
        both = lambda key: jnp.concatenate([packed[f"chosen_{key}"], packed[f"rejected_{key}"]])
        at = lambda side: jnp.take_along_axis(h, packed[f"{side}_predictors_BxW"][..., None], 1)
        h = jnp.concatenate([at("chosen"), at("rejected")])  # (2B, W, D)
        mask = both("mask_BxW")
        _, seq_logp = losses.sequence_logprobs(model.logits(h), both("targets_BxW"), mask)
        lengths = jnp.sum(mask, axis=-1, dtype=jnp.float32)
        return (
            (seq_logp[:n], seq_logp[n:]),
            (lengths[:n], lengths[n:]),
            packed["unshared_prompts"],
        )
    fields = ["tokens_BxT", "positions_BxT", "attn_mask_BxT", "loss_mask_BxT"]
    if "chosen_window_BxW" in batch:
        fields += ["window_BxW", "window_mask_BxW"]  # logits only on the responses' window
    both = {field: concat_pairs(batch, field) for field in fields}
    logits, targets, mask = response_logits(graphdef, params, rest, both)
    _, seq_logp = losses.sequence_logprobs(logits, targets, mask)
    lengths = jnp.sum(both["loss_mask_BxT"][:, 1:], axis=-1, dtype=jnp.float32)
    # The same outputs whichever path a batch takes (a batch without a window cannot pack).
    unshared = jnp.zeros((), jnp.float32) if share_prompt else None
    return (seq_logp[:n], seq_logp[n:]), (lengths[:n], lengths[n:]), unshared


def reference_logprobs(graphdef, ref_params, rest, batch, *, share_prompt=False):
    """Reference log-probs of chosen and rejected (no gradient)."""
    (chosen, rejected), _, _ = pair_logprobs(
        graphdef, ref_params, rest, batch, share_prompt=share_prompt
    )
    return jax.lax.stop_gradient(chosen), jax.lax.stop_gradient(rejected)


def dpo_step_loss(
    params,
    frozen,
    batch,
    rng,
    *,
    graphdef,
    loss_type: str = "sigmoid",
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    simpo_gamma: float = 0.5,
    orpo_beta: float = 0.1,
    share_prompt: bool = False,
):
    """The DPO-family loss of one batch of pairs; weight = number of real pairs.
    ``share_prompt``: one packed forward per pair for policy and reference (`pair_logprobs`)."""
    del rng
    mask_B = batch["example_mask_B"]
    (pi_c, pi_r), (len_c, len_r), unshared = pair_logprobs(
        graphdef, params, frozen["rest"], batch, share_prompt=share_prompt
    )
    if loss_type == "simpo":
        loss, metrics = losses.simpo_loss(
            pi_c / jnp.maximum(len_c, 1),
            pi_r / jnp.maximum(len_r, 1),
            beta=beta,
            gamma=simpo_gamma,
            label_smoothing=label_smoothing,
            mask=mask_B,
        )
    elif loss_type == "orpo":
        # ORPO's SFT term: the token-mean NLL of the chosen responses.
        real = mask_B.astype(bool)
        chosen_nll = -jnp.sum(jnp.where(real, pi_c, 0.0)) / jnp.maximum(
            jnp.sum(jnp.where(real, len_c, 0.0)), 1.0
        )
        loss, metrics = losses.orpo_loss(
            pi_c / jnp.maximum(len_c, 1),
            pi_r / jnp.maximum(len_r, 1),
            beta=orpo_beta,
            chosen_nll=chosen_nll,
            mask=mask_B,
        )
    else:
        if "ref_chosen_logp_B" in batch:
            ref_c, ref_r = batch["ref_chosen_logp_B"], batch["ref_rejected_logp_B"]
        else:
            ref_c, ref_r = reference_logprobs(
                graphdef, frozen["extra"], frozen["rest"], batch, share_prompt=share_prompt
            )
        loss, metrics = losses.dpo_loss(
            pi_c,
            pi_r,
            ref_c,
            ref_r,
            beta=beta,
            loss_type=loss_type,
            label_smoothing=label_smoothing,
            mask=mask_B,
        )
    metrics = dict(metrics)
    metrics.setdefault("logps/chosen", losses.masked_mean(pi_c, mask_B.astype(bool)))
    metrics.setdefault("logps/rejected", losses.masked_mean(pi_r, mask_B.astype(bool)))
    if unshared is not None:
        metrics["unshared_prompts"] = unshared
    return loss, (jnp.sum(mask_B, dtype=jnp.float32), metrics)
