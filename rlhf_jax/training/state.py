"""The pieces every phase shares: train state, optimizer, sharded init, and the update step.

A phase supplies one pure loss function

    loss_fn(params, frozen, micro_batch, rng) -> (loss, (weight, metrics))

where ``loss`` is a mean over the micro-batch and ``weight`` the number of things it averaged
(tokens, pairs). ``make_train_step`` turns it into ``train_step(state, batch) -> (state,
metrics)``: gradient accumulation over micro-batches that is exact (micro gradients are
combined with their weights, so the result is the gradient of the whole batch's mean), an
optax update, and a guard that never applies a non-finite update.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, Literal

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rlhf_jax import sharding as sharding_lib
from rlhf_jax import xla_options

LossFn = Callable[[Any, Any, dict, jax.Array], tuple[jax.Array, tuple[jax.Array, dict]]]


@flax.struct.dataclass
class TrainState:
    """Everything a phase's step reads and writes; a pytree, checkpointed whole."""

    step: jax.Array  # int32: completed optimizer steps
    params: Any  # nnx.State of the trained parameters
    opt_state: Any  # optax state
    rng: jax.Array  # uint32[2] key; each step folds in its step number
    frozen: Any  # arrays the step reads but never updates (reference policy, non-Params)
    nonfinite_count: jax.Array  # int32: updates skipped because loss or gradient was not finite
    first_nonfinite_step: jax.Array  # int32: the step where that first happened, -1 if never


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with warmup and decay, global-norm clipping."""

    learning_rate: float = 1e-5  # peak learning rate
    schedule: Literal["constant", "linear", "cosine"] = "cosine"  # decay after warmup
    warmup_steps: int = 0  # linear warmup from 0 to the peak
    total_steps: int = 1000  # schedule length (warmup included)
    end_lr_fraction: float = 0.0  # final learning rate as a fraction of the peak
    weight_decay: float = 0.0  # decoupled weight decay on matrices (not norms or biases)
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8  # added outside the square root (PyTorch placement)
    eps_root: float = 0.0  # added inside it (TensorFlow placement); changes early updates
    max_grad_norm: float | None = 1.0  # clip by global norm; None disables
    name: Literal["adamw", "sgd"] = "adamw"  # sgd: plain gradient steps (equivalence tests)


def make_schedule(config: OptimizerConfig) -> optax.Schedule:
    peak, end = config.learning_rate, config.learning_rate * config.end_lr_fraction
    decay_steps = max(config.total_steps - config.warmup_steps, 1)
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
    if config.warmup_steps <= 0:
        return decay
    warmup = optax.linear_schedule(0.0, peak, config.warmup_steps)
    return optax.join_schedules([warmup, decay], [config.warmup_steps])


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
    def decay_mask(params):
        return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)

    if config.name == "sgd":
        base = optax.sgd(make_schedule(config))
    elif config.name == "adamw":
        base = optax.adamw(
            make_schedule(config),
            b1=config.b1,
            b2=config.b2,
            eps=config.eps,
            eps_root=config.eps_root,
            weight_decay=config.weight_decay,
            mask=decay_mask,
        )
    else:
        raise ValueError(f"optimizer.name={config.name!r}; expected 'adamw' or 'sgd'")
    if config.max_grad_norm is None:
        return base
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), base)


def split_model(model: nnx.Module):
    """``(graphdef, params, rest)``: the trained Params and any other variables."""
    return nnx.split(model, nnx.Param, ...)


def init_train_state(
    model_fn: Callable[[], nnx.Module],
    tx: optax.GradientTransformation,
    mesh,
    *,
    seed: int,
    params=None,
    frozen_fn: Callable[[], Any] | None = None,
    frozen_extra=None,
    rules=sharding_lib.DEFAULT_RULES,
):
    """Builds the train state already sharded: eval_shape → shardings → jit(init, out_shardings).

    ``model_fn`` creates the model (its random init runs under jit, straight into the
    shardings); ``params``, when given, replaces the initial parameters (e.g. loaded from a
    checkpoint). Extra frozen arrays (e.g. reference-policy params) come from ``frozen_fn``
    (built under jit) or ``frozen_extra`` (already built). Returns ``(state, state_shardings,
    graphdef)``.
    """
    abstract_model = nnx.eval_shape(model_fn)
    graphdef, abstract_params, abstract_rest = split_model(abstract_model)
    param_sh = sharding_lib.state_shardings(abstract_params, mesh, rules)
    rest_sh = sharding_lib.state_shardings(abstract_rest, mesh, rules)

    def init_params():
        _, new_params, rest = split_model(model_fn())
        return new_params, rest

    if params is None:
        params, rest = jax.jit(init_params, out_shardings=(param_sh, rest_sh))()
    else:
        params = jax.device_put(params, param_sh)
        rest = jax.jit(lambda: init_params()[1], out_shardings=rest_sh)()
    frozen, frozen_sh = {"rest": rest}, {"rest": rest_sh}
    if frozen_fn is not None:
        frozen_sh["extra"] = sharding_lib.state_shardings(jax.eval_shape(frozen_fn), mesh, rules)
        frozen["extra"] = jax.jit(frozen_fn, out_shardings=frozen_sh["extra"])()
    elif frozen_extra is not None:
        frozen_sh["extra"] = sharding_lib.state_shardings(frozen_extra, mesh, rules)
        # Copies: the step donates the state, and a buffer shared with ``params`` (the usual
        # case, a reference equal to the initial policy) must not be donated twice.
        frozen["extra"] = jax.tree.map(
            lambda x: jnp.array(x, copy=True), jax.device_put(frozen_extra, frozen_sh["extra"])
        )
    opt_sh = sharding_lib.tree_shardings(jax.eval_shape(tx.init, params), param_sh, mesh)
    opt_state = jax.jit(tx.init, out_shardings=opt_sh)(params)
    repl = sharding_lib.replicated(mesh)
    state = TrainState(
        step=jax.device_put(jnp.zeros((), jnp.int32), repl),
        params=params,
        opt_state=opt_state,
        rng=jax.device_put(jax.random.key_data(jax.random.key(seed)), repl),
        frozen=frozen,
        nonfinite_count=jax.device_put(jnp.zeros((), jnp.int32), repl),
        first_nonfinite_step=jax.device_put(jnp.full((), -1, jnp.int32), repl),
    )
    shardings = TrainState(
        step=repl,
        params=param_sh,
        opt_state=opt_sh,
        rng=repl,
        frozen=frozen_sh,
        nonfinite_count=repl,
        first_nonfinite_step=repl,
    )
    return state, shardings, graphdef


def abstract_like(state, shardings):
    """ShapeDtypeStructs with shardings: the restore target for an Orbax checkpoint."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
    )


def _split_micro(batch: dict, accum_steps: int) -> dict:
    """[B, ...] → [A, B/A, ...] with strided rows, so each micro-batch spans every device."""

    def split(x):
        if x.shape[0] % accum_steps:
            raise ValueError(
                f"batch size {x.shape[0]} does not divide by grad_accum_steps={accum_steps}"
            )
        x = x.reshape((x.shape[0] // accum_steps, accum_steps, *x.shape[1:]))
        return jnp.swapaxes(x, 0, 1)

    return jax.tree.map(split, batch)


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


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
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def micro(carry, xs):
        grad_sum, weight_sum, loss_sum, metric_sum = carry
        micro_batch, index = xs
        (loss, (weight, metrics)), grads = grad_fn(
            state.params, state.frozen, micro_batch, jax.random.fold_in(rng, index)
        )
        weight = jnp.asarray(weight, jnp.float32)
        grad_sum = jax.tree.map(lambda g, x: g + weight * x, grad_sum, grads)
        metric_sum = jax.tree.map(lambda m, x: m + weight * x, metric_sum, metrics)
        return (grad_sum, weight_sum + weight, loss_sum + weight * loss, metric_sum), None

    micro_batches = _split_micro(batch, accum_steps)
    first = jax.tree.map(lambda x: x[0], micro_batches)
    metric_shapes = jax.eval_shape(lambda: loss_fn(state.params, state.frozen, first, rng)[1][1])
    zeros = (
        jax.tree.map(jnp.zeros_like, state.params),
        jnp.zeros((), jnp.float32),
        jnp.zeros((), jnp.float32),
        jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), metric_shapes),
    )
    (grad_sum, weight_sum, loss_sum, metric_sum), _ = jax.lax.scan(
        micro, zeros, (micro_batches, jnp.arange(accum_steps))
    )
    denom = jnp.maximum(weight_sum, 1.0)
    grads = jax.tree.map(lambda g: g / denom, grad_sum)
    loss = loss_sum / denom
    metrics = jax.tree.map(lambda m: m / denom, metric_sum)

    updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & _all_finite(grads)
    # A non-finite update is never applied: the state keeps its last good parameters.
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    first_bad = jnp.where(
        (state.first_nonfinite_step < 0) & ~finite, state.step, state.first_nonfinite_step
    )
    new_state = state.replace(
        step=state.step + 1,
        params=keep(new_params, state.params),
        opt_state=keep(new_opt_state, state.opt_state),
        nonfinite_count=state.nonfinite_count + (~finite).astype(jnp.int32),
        first_nonfinite_step=first_bad,
    )
    metrics = {
        **metrics,
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        "param_norm": optax.tree.norm(state.params),
        "nonfinite_updates": new_state.nonfinite_count.astype(jnp.float32),
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
