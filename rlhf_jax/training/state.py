"""The offline phases' train state and their one update step.

A phase supplies one pure loss function

    loss_fn(params, frozen, micro_batch, rng) -> (loss, (weight, metrics))

where ``loss`` is a mean over the micro-batch and ``weight`` the number of things it averaged
(tokens, pairs). ``jit_train_step`` turns it into ``train_step(state, batch) -> (state,
metrics)``: exact gradient accumulation over micro-batches (`grads.accumulate`), an optax
update, and the guard that never applies a non-finite loss, gradient or update.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from rlhf_jax import sharding as sharding_lib
from rlhf_jax import xla_options
from rlhf_jax.placement import PlacedModel, copy_tree
from rlhf_jax.training import grads as grads_lib

LossFn = Callable[[Any, Any, dict, jax.Array], tuple[jax.Array, tuple[jax.Array, dict]]]


@flax.struct.dataclass
class TrainState:
    """Everything a phase's step reads and writes; a pytree, checkpointed whole."""

    step: jax.Array  # int32: completed optimizer steps
    params: Any  # nnx.State of the trained parameters
    opt_state: Any  # optax state
    rng: jax.Array  # uint32[2] key; each step folds in its step number
    frozen: Any  # arrays the step reads but never updates (reference policy, non-Params)
    nonfinite_count: jax.Array  # int32: updates refused for a non-finite loss, gradient or update
    first_nonfinite_step: jax.Array  # int32: the step where that first happened, -1 if never


def init_opt_state(tx: optax.GradientTransformation, params, param_shardings, mesh):
    """``(opt_state, shardings)``: the optimizer state, created in the parameters' shardings."""
    shardings = sharding_lib.tree_shardings(jax.eval_shape(tx.init, params), param_shardings, mesh)
    return jax.jit(tx.init, out_shardings=shardings)(params), shardings


def init_train_state(
    model: PlacedModel,
    tx: optax.GradientTransformation,
    *,
    seed: int,
    frozen_extra=None,
    rules=sharding_lib.DEFAULT_RULES,
) -> tuple[TrainState, TrainState]:
    """``(state, shardings)`` for training ``model``'s params, everything already on its mesh.

    ``frozen_extra`` (e.g. the reference policy's params) joins the state's frozen arrays,
    copied so that donating the state never donates a buffer another tree still holds.
    """
    mesh = model.mesh
    frozen, frozen_sh = {"rest": model.rest}, {"rest": model.rest_shardings}
    if frozen_extra is not None:
        frozen_sh["extra"] = sharding_lib.state_shardings(frozen_extra, mesh, rules)
        frozen["extra"] = copy_tree(jax.device_put(frozen_extra, frozen_sh["extra"]))
    opt_state, opt_sh = init_opt_state(tx, model.params, model.shardings, mesh)
    repl = sharding_lib.replicated(mesh)
    put = lambda x: jax.device_put(x, repl)
    state = TrainState(
        step=put(jnp.zeros((), jnp.int32)),
        params=model.params,
        opt_state=opt_state,
        rng=put(jax.random.key_data(jax.random.key(seed))),
        frozen=frozen,
        nonfinite_count=put(jnp.zeros((), jnp.int32)),
        first_nonfinite_step=put(jnp.full((), -1, jnp.int32)),
    )
    shardings = TrainState(
        step=repl,
        params=model.shardings,
        opt_state=opt_sh,
        rng=repl,
        frozen=frozen_sh,
        nonfinite_count=repl,
        first_nonfinite_step=repl,
    )
    return state, shardings


def train_step(
    state: TrainState,
    batch: dict,
    *,
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    accum_steps: int = 1,
) -> tuple[TrainState, dict]:
    """One optimizer step over ``batch`` (pure; jit it with ``jit_train_step``)."""
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    micro_loss = lambda p, mb, i: loss_fn(p, state.frozen, mb, jax.random.fold_in(rng, i))
    loss, grads, metrics, _ = grads_lib.accumulate(micro_loss, state.params, batch, accum_steps)
    updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & grads_lib.all_finite(grads, new_params)
    count, first = grads_lib.count_nonfinite(
        finite, state.step, state.nonfinite_count, state.first_nonfinite_step
    )
    new_state = state.replace(
        step=state.step + 1,
        params=grads_lib.keep_if_finite(finite, new_params, state.params),
        opt_state=grads_lib.keep_if_finite(finite, new_opt_state, state.opt_state),
        nonfinite_count=count,
        first_nonfinite_step=first,
    )
    metrics = {
        **metrics,
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        "param_norm": optax.tree.norm(state.params),
        "nonfinite_updates": count.astype(jnp.float32),
    }
    return new_state, metrics


def jit_train_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    state_shardings: TrainState,
    mesh,
    *,
    accum_steps: int = 1,
):
    """The phase's step, jitted once with explicit shardings and the state donated."""
    step = functools.partial(train_step, loss_fn=loss_fn, tx=tx, accum_steps=accum_steps)
    # The batch keeps the sharding ``shard_batch`` gave it (leading axis over data × fsdp).
    return jax.jit(
        step,
        in_shardings=(state_shardings, None),
        out_shardings=(state_shardings, sharding_lib.replicated(mesh)),
        donate_argnums=0,
        compiler_options=xla_options.compiler_options(),
    )
