"""DPO and its relatives (IPO, cDPO/rDPO, SLiC-hinge, SimPO, ORPO) on preference pairs.

Policy log-probs of chosen and rejected come from ONE forward pass (`pairs.forward`: one packed
row per pair with the prompt computed once under ``share_prompt``, the default; else
concatenated on the batch axis). The reference is the initial policy; its log-probs are either
precomputed in one pass before training (batch keys ``ref_chosen_logp_B`` /
``ref_rejected_logp_B``; the reference model is then not kept in memory) or computed in the step
from frozen reference params (``frozen["extra"]``); under LoRA, from the policy itself with
its adapters switched off (`lora.switched_off`), so no copy of the weights is kept.

Pair batch keys as in ``reward.py``, plus ``chosen_loss_mask_BxT``/``rejected_loss_mask_BxT``
marking the response tokens whose log-probs are summed, and optionally the response-window keys
(``chosen_window_BxW`` etc., one W for both; see `responses`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from rlhf_jax import data as data_lib
from rlhf_jax import losses
from rlhf_jax import sharding as sharding_lib
from rlhf_jax.models import lora
from rlhf_jax.training import pairs
from rlhf_jax.training.phase import Phase, PhaseConfig, PhaseInputs, PhaseParts

# Reference-free objectives use length-normalised policy log-probs and no reference model.
REFERENCE_FREE = ("simpo", "orpo")
LOSS_TYPES = (*losses.DPO_LOSS_TYPES, *REFERENCE_FREE)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DPOLossConfig:
    loss_type: str = "sigmoid"  # sigmoid | robust | hinge | ipo | simpo | orpo
    beta: float = 0.1  # KL strength (β of DPO; SimPO's β)
    label_smoothing: float = 0.0  # cDPO / rDPO label-noise rate
    precompute_reference: bool = True  # reference log-probs in one pass before training
    simpo_gamma: float = 0.5  # SimPO target margin
    orpo_beta: float = 0.1  # ORPO weight of the odds-ratio term
    share_prompt: bool = True  # packed pairs, policy and reference alike (`pairs`)

    def __post_init__(self):
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"dpo.loss_type={self.loss_type!r}; expected one of {LOSS_TYPES}")

    @property
    def needs_reference(self) -> bool:
        return self.loss_type not in REFERENCE_FREE


@dataclasses.dataclass(frozen=True, kw_only=True)
class DPOPhaseConfig(PhaseConfig):
    dpo: DPOLossConfig = dataclasses.field(default_factory=DPOLossConfig)


def pair_logprobs(
    graphdef, params, rest, batch, *, share_prompt=False, adapters=True, dropout_key=None
):
    """Summed response log-probs and response lengths of chosen and rejected, one forward.

    The third value is, with ``share_prompt``, the count of real pairs whose prompts differ
    (must be 0; 0 when the batch has no window and runs unpacked), else None. ``adapters``
    False: the base model under LoRA adapters (`lora.switched_off`); ``dropout_key``: their
    dropout (`lora.with_dropout`).
    """
    model = lora.with_dropout(nnx.merge(graphdef, params, rest), dropout_key)
    apply = lambda t, p, a, m: model.hidden_states(
        t, positions_BxT=p, attn_mask_BxT=a, mask_BxTxT=m
    )
    with lora.switched_off(model) if not adapters else contextlib.nullcontext():
        fwd = pairs.forward(apply, batch, share_prompt=share_prompt)
        h, targets, mask, lengths = pairs.response_hidden(fwd)
        stats = model.token_logprobs(h, targets, mask.astype(bool))
    seq_logp = jnp.sum(stats.logp_BxN, axis=-1)
    n = batch["chosen_tokens_BxT"].shape[0]
    return (seq_logp[:n], seq_logp[n:]), (lengths[:n], lengths[n:]), fwd.unshared_prompts


def reference_logprobs(graphdef, ref_params, rest, batch, *, share_prompt=False):
    """Reference log-probs of chosen and rejected (no gradient). Under LoRA, ``ref_params``
    are the trained adapters and the reference is the base they are switched off on."""
    (chosen, rejected), _, _ = pair_logprobs(
        graphdef, ref_params, rest, batch, share_prompt=share_prompt, adapters=False
    )
    return jax.lax.stop_gradient(chosen), jax.lax.stop_gradient(rejected)


def dpo_step_loss(params, frozen, batch, rng, *, graphdef, config: DPOLossConfig):
    """The DPO-family loss of one batch of pairs; weight = number of real pairs. Without
    ``frozen["extra"]`` an in-step reference is the policy with its LoRA adapters off."""
    mask_B = batch["example_mask_B"]
    (pi_c, pi_r), (len_c, len_r), unshared = pair_logprobs(
        graphdef, params, frozen["rest"], batch, share_prompt=config.share_prompt, dropout_key=rng
    )
    if "label_B" in batch and config.loss_type in ("simpo", "orpo"):
        raise ValueError(
            f"dpo.loss_type={config.loss_type!r} takes hard labels only, but the data has soft "
            "labels (chosen_probability); use loss_type='sigmoid'"
        )
    if config.loss_type == "simpo":
        loss, metrics = losses.simpo_loss(
            pi_c / jnp.maximum(len_c, 1),
            pi_r / jnp.maximum(len_r, 1),
            beta=config.beta,
            gamma=config.simpo_gamma,
            label_smoothing=config.label_smoothing,
            mask=mask_B,
        )
    elif config.loss_type == "orpo":
        # ORPO's SFT term: the token-mean NLL of the chosen responses.
        real = mask_B.astype(bool)
        chosen_nll = -jnp.sum(jnp.where(real, pi_c, 0.0)) / jnp.maximum(
            jnp.sum(jnp.where(real, len_c, 0.0)), 1.0
        )
        loss, metrics = losses.orpo_loss(
            pi_c / jnp.maximum(len_c, 1),
            pi_r / jnp.maximum(len_r, 1),
            beta=config.orpo_beta,
            chosen_nll=chosen_nll,
            mask=mask_B,
        )
    else:
        if "ref_chosen_logp_B" in batch:
            ref_c, ref_r = batch["ref_chosen_logp_B"], batch["ref_rejected_logp_B"]
        else:
            ref = frozen.get("extra")
            ref_c, ref_r = reference_logprobs(
                graphdef,
                params if ref is None else ref,
                frozen["rest"],
                batch,
                share_prompt=config.share_prompt,
            )
        loss, metrics = losses.dpo_loss(
            pi_c,
            pi_r,
            ref_c,
            ref_r,
            beta=config.beta,
            loss_type=config.loss_type,
            label_smoothing=config.label_smoothing,
            label=batch.get("label_B"),
            mask=mask_B,
        )
    metrics = dict(metrics)
    metrics.setdefault("logps/chosen", losses.masked_mean(pi_c, mask_B.astype(bool)))
    metrics.setdefault("logps/rejected", losses.masked_mean(pi_r, mask_B.astype(bool)))
    if unshared is not None:
        metrics["unshared_prompts"] = unshared
    return loss, (jnp.sum(mask_B, dtype=jnp.float32), metrics)


def precompute_reference_logprobs(dataset, data_config, model, *, share_prompt: bool):
    """log π_ref of every example's chosen and rejected response, (N, 2) by example id, in
    one pass of ``model`` (a `PlacedModel`, the reference) over ``dataset``."""

    @jax.jit
    def ref_fn(batch):
        return reference_logprobs(
            model.graphdef, model.params, model.rest, batch, share_prompt=share_prompt
        )

    it = data_lib.make_iterator(dataset, data_config, num_epochs=1, shuffle=False)
    table = np.zeros((len(dataset.examples), 2), np.float32)
    for batch in it:
        chosen, rejected = ref_fn(sharding_lib.shard_batch(batch, model.mesh))
        ids = multihost_utils.process_allgather(batch["example_id_B"], tiled=True)
        values = np.stack(
            [np.asarray(jax.device_get(chosen)), np.asarray(jax.device_get(rejected))], -1
        )
        real = ids >= 0
        table[ids[real]] = values[real]
    return table


def with_reference(batches, table):
    """Adds each example's precomputed reference log-probs to its batch (0 for filler rows)."""
    for batch in batches:
        ids = batch["example_id_B"]
        safe = np.where(ids >= 0, ids, 0)
        yield dict(
            batch,
            ref_chosen_logp_B=np.where(ids >= 0, table[safe, 0], 0.0).astype(np.float32),
            ref_rejected_logp_B=np.where(ids >= 0, table[safe, 1], 0.0).astype(np.float32),
        )


def setup(inputs: PhaseInputs) -> PhaseParts:
    """The loss, and the reference: the initial policy (also after a resume, it is the phase's
    source, not the partly trained state), in the step or as precomputed tables."""
    config: DPOLossConfig = inputs.config.dpo
    loss_fn = functools.partial(dpo_step_loss, graphdef=inputs.model.graphdef, config=config)
    in_step = config.needs_reference and not config.precompute_reference
    # Under LoRA the reference is the base, the adapters switched off: no copy of the weights.
    adapted = inputs.config.model.adapters is not None
    parts = PhaseParts(
        loss_fn=loss_fn,
        frozen_extra=inputs.model.params if in_step and not adapted else None,
        fingerprint={"dpo_reference_in_step": in_step},
    )
    if not config.needs_reference or in_step:
        return parts
    tables = {
        split: precompute_reference_logprobs(
            dataset, inputs.config.data, inputs.model, share_prompt=config.share_prompt
        )
        for split, dataset in (("train", inputs.train), ("eval", inputs.eval))
        if dataset is not None and len(dataset.examples)
    }
    return dataclasses.replace(
        parts, with_batches=lambda batches, split: with_reference(batches, tables[split])
    )


PHASE = Phase(
    name="dpo", config_type=DPOPhaseConfig, data_kinds=("preference",), head="lm", setup=setup
)
