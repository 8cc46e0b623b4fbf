"""The optimizer every phase uses: AdamW (or plain SGD) with warmup and decay, global-norm clip.

The schedule's length is the phase's number of optimizer steps, passed in by the phase, so it
cannot disagree with how long the phase runs.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import optax

from rlhf_jax.models.layers import matrix_mask


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with warmup and decay, global-norm clipping."""

    learning_rate: float = 1e-5  # peak learning rate
    schedule: Literal["constant", "linear", "cosine"] = "cosine"  # decay after warmup
    # Linear warmup from 0 to the peak, in steps; None: 5% of the run's steps (at least 1),
    # so it follows the run's length.
    warmup_steps: int | None = 0
    end_lr_fraction: float = 0.0  # final learning rate as a fraction of the peak
    weight_decay: float = 0.0  # decoupled weight decay on matrices (not norms or biases)
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8  # added outside the square root (PyTorch placement)
    eps_root: float = 0.0  # added inside it (TensorFlow placement); changes early updates
    max_grad_norm: float | None = 1.0  # clip by global norm; None disables
    name: Literal["adamw", "sgd"] = "adamw"  # sgd: plain gradient steps (equivalence tests)


def warmup_steps(config: OptimizerConfig, total_steps: int) -> int:
    """The warm-up of a run of ``total_steps``: ``config.warmup_steps``, or 5% when None."""
    if config.warmup_steps is None:
        return max(1, total_steps // 20)
    return config.warmup_steps


def make_schedule(config: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """Warmup then decay over ``total_steps`` optimizer steps (warmup included)."""
    peak, end = config.learning_rate, config.learning_rate * config.end_lr_fraction
    warmup_len = warmup_steps(config, total_steps)
    decay_steps = max(total_steps - warmup_len, 1)
    if config.schedule == "constant":
        decay = optax.constant_schedule(peak)
    elif config.schedule == "linear":
        decay = optax.linear_schedule(peak, end, decay_steps)
    elif config.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=config.end_lr_fraction)
    else:
        raise ValueError(
            f"optimizer.schedule={config.schedule!r}; expected 'constant', 'linear' or 'cosine'"
        )
    if warmup_len <= 0:
        return decay
    warmup = optax.linear_schedule(0.0, peak, warmup_len)
    return optax.join_schedules([warmup, decay], [warmup_len])


def make_optimizer(config: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
    """The optax transformation of ``config`` for a run of ``total_steps`` optimizer steps."""

    schedule = make_schedule(config, total_steps)
    if config.name == "sgd":
        base = optax.sgd(schedule)
    elif config.name == "adamw":
        base = optax.adamw(
            schedule,
            b1=config.b1,
            b2=config.b2,
            eps=config.eps,
            eps_root=config.eps_root,
            weight_decay=config.weight_decay,
            mask=matrix_mask,
        )
    else:
        raise ValueError(f"optimizer.name={config.name!r}; expected 'adamw' or 'sgd'")
    if config.max_grad_norm is None:
        return base
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), base)
