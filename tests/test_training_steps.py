"""The phases' steps: sharded == single device, one trace, exact accumulation, finite guard."""

import dataclasses
import functools

import jax
import numpy as np
import optax
import pytest
from training_testing import (
    DPO,
    RM,
    init_state,
    pair_batch,
    sft_batch,
    tiny_lm,
    tiny_reward_model,
    windowed_pair_batch,
)

from rlhf_jax import sharding
from rlhf_jax.training import dpo, reward, sft
from rlhf_jax.training import state as state_lib
from rlhf_jax.training.loop import NonFiniteError, check_finite
from rlhf_jax.training.optimizer import OptimizerConfig, make_optimizer

TX = make_optimizer(
    OptimizerConfig(learning_rate=1e-3, schedule="constant", max_grad_norm=1.0), total_steps=100
)
# Equivalence tests compare parameters after updates that are linear in the gradient: Adam's
# m/√v turns float-rounding differences in near-zero gradients into lr-sized steps.
SGD = optax.sgd(0.5)


def _reference():
    return tiny_lm(seed=1)


PHASES = {
    "sft": (tiny_lm, sft.sft_loss, sft_batch, None),
    "reward": (
        tiny_reward_model,
        functools.partial(reward.reward_pair_loss, config=RM),
        pair_batch,
        None,
    ),
    # DPO-family rows carry the response window, as the data layer's batches do.
    "dpo": (
        tiny_lm,
        functools.partial(dpo.dpo_step_loss, config=DPO),
        windowed_pair_batch,
        _reference,
    ),
    # Pairs packed as [prompt | chosen | rejected] (the phases' default).
    "dpo_packed": (
        tiny_lm,
        functools.partial(dpo.dpo_step_loss, config=dataclasses.replace(DPO, share_prompt=True)),
        windowed_pair_batch,
        _reference,
    ),
    "reward_packed": (
        tiny_reward_model,
        functools.partial(
            reward.reward_pair_loss, config=dataclasses.replace(RM, share_prompt=True)
        ),
        windowed_pair_batch,
        None,
    ),
    "ipo": (
        tiny_lm,
        functools.partial(dpo.dpo_step_loss, config=dataclasses.replace(DPO, loss_type="ipo")),
        pair_batch,
        _reference,
    ),
    "simpo": (
        tiny_lm,
        functools.partial(dpo.dpo_step_loss, config=dataclasses.replace(DPO, loss_type="simpo")),
        windowed_pair_batch,
        None,
    ),
}


def _run(phase, mesh, *, steps=2, accum_steps=1, batch_size=8, tx=SGD):
    model_fn, loss_fn, batch_fn, reference_fn = PHASES[phase]
    state, shardings, graphdef = init_state(model_fn, tx, mesh, reference_fn=reference_fn)
    step = state_lib.jit_train_step(
        functools.partial(loss_fn, graphdef=graphdef),
        tx,
        shardings,
        mesh,
        accum_steps=accum_steps,
    )
    history = []
    for i in range(steps):
        state, metrics = step(state, sharding.shard_batch(batch_fn(i, batch=batch_size), mesh))
        history.append(jax.device_get(metrics))
    return state, history, step


def _single_device_mesh():
    return sharding.make_mesh(sharding.MeshConfig(1, 1, 1), devices=jax.devices()[:1])


@pytest.mark.parametrize("phase", ["sft", "reward", "dpo", "dpo_packed"])
def test_sharded_step_matches_single_device(phase):
    mesh8 = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, tensor=2))
    state1, hist1, _ = _run(phase, _single_device_mesh())
    state8, hist8, step8 = _run(phase, mesh8)
    for m1, m8 in zip(hist1, hist8, strict=True):
        np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5, atol=1e-6)
    flat1 = jax.tree.leaves(jax.device_get(state1.params))
    flat8 = jax.tree.leaves(jax.device_get(state8.params))
    for p1, p8 in zip(flat1, flat8, strict=True):
        np.testing.assert_allclose(p8, p1, rtol=1e-5, atol=2e-6)
    # Parameters really are spread over the mesh, not replicated.
    embed = state8.params["trunk"]["embed"].get_value()
    assert len(embed.sharding.device_set) == 8
    assert embed.addressable_shards[0].data.size < embed.size
    assert step8._cache_size() == 1


@pytest.mark.parametrize("phase", ["sft", "reward", "simpo", "reward_packed"])
def test_gradient_accumulation_is_exact(phase):
    mesh = _single_device_mesh()
    state1, hist1, _ = _run(phase, mesh, accum_steps=1)
    state4, hist4, _ = _run(phase, mesh, accum_steps=4)
    for m1, m4 in zip(hist1, hist4, strict=True):
        np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-5)
        np.testing.assert_allclose(m4["grad_norm"], m1["grad_norm"], rtol=1e-4)
    for p1, p4 in zip(jax.tree.leaves(state1.params), jax.tree.leaves(state4.params), strict=True):
        np.testing.assert_allclose(p4, p1, rtol=1e-5, atol=2e-6)


def test_step_traces_once_per_shape():
    _, _, step = _run("ipo", _single_device_mesh(), steps=3, tx=TX)
    assert step._cache_size() == 1


def test_padded_pairs_do_not_change_the_reward_step():
    mesh = _single_device_mesh()
    model_fn, loss_fn, _, _ = PHASES["reward"]
    state, _, graphdef = init_state(model_fn, TX, mesh)
    loss = jax.jit(jax.value_and_grad(functools.partial(loss_fn, graphdef=graphdef), has_aux=True))
    full = pair_batch(0, batch=8, padded_rows=3)
    # The same real rows with other contents in the padded ones: at equal shape the program and
    # its reduction order are the same, so anything a padded row leaked would show: bit-equal.
    other = {k: v.copy() for k, v in full.items()}
    for side in ("chosen", "rejected"):
        other[f"{side}_tokens_BxT"][-3:] = (other[f"{side}_tokens_BxT"][-3:] + 7) % 64
    real = {k: v[:5] for k, v in full.items()}
    (l_full, (w_full, _)), g_full = loss(state.params, state.frozen, full, None)
    (l_other, (w_other, _)), g_other = loss(state.params, state.frozen, other, None)
    (l_real, (w_real, _)), g_real = loss(state.params, state.frozen, real, None)
    assert float(w_full) == float(w_other) == float(w_real) == 5.0
    assert float(l_full) == float(l_other)
    for a, b in zip(jax.tree.leaves(g_full), jax.tree.leaves(g_other), strict=True):
        np.testing.assert_array_equal(a, b)
    # Against the real rows alone (another batch shape, so another float32 summation order):
    # equal to rounding, leaf by leaf in norm. Element-wise relative checks do not fit here: an
    # element that is a cancelling sum of O(1) terms moves by an ulp of the terms, not of itself.
    np.testing.assert_allclose(l_full, l_real, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g_full), jax.tree.leaves(g_real), strict=True):
        assert np.linalg.norm(a - b) <= 1e-6 * np.linalg.norm(b)


def test_dpo_first_step_with_reference_equal_to_policy_is_log2():
    mesh = _single_device_mesh()
    state, shardings, graphdef = init_state(tiny_lm, TX, mesh, reference_fn=tiny_lm)
    step = state_lib.jit_train_step(
        functools.partial(dpo.dpo_step_loss, graphdef=graphdef, config=DPO), TX, shardings, mesh
    )
    _, metrics = step(state, sharding.shard_batch(pair_batch(0), mesh))
    np.testing.assert_allclose(metrics["loss"], np.log(2.0), rtol=1e-6)
    assert float(metrics["rewards/margins"]) == 0.0


def test_nonfinite_update_is_never_applied():
    mesh = _single_device_mesh()
    state, shardings, graphdef = init_state(tiny_lm, TX, mesh)

    def poisoned_loss(params, frozen, batch, rng):
        loss, aux = sft.sft_loss(params, frozen, batch, rng, graphdef=graphdef)
        return loss * batch["scale"][0], aux

    step = state_lib.jit_train_step(poisoned_loss, TX, shardings, mesh)
    before = jax.device_get(state.params)
    good = dict(sft_batch(0), scale=np.ones(8, np.float32))
    bad = dict(sft_batch(1), scale=np.full(8, np.nan, np.float32))
    state, _ = step(state, sharding.shard_batch(good, mesh))
    after_good = jax.device_get(state.params)
    state, metrics = step(state, sharding.shard_batch(bad, mesh))
    for a, b in zip(jax.tree.leaves(after_good), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after_good), strict=True)
    )
    assert float(metrics["nonfinite_updates"]) == 1.0
    assert int(state.step) == 2 and int(state.first_nonfinite_step) == 1
    # Named as checkpoints count: the second update (after 1 completed step) was refused.
    with pytest.raises(NonFiniteError, match=r"in step 2; .* at most 1 here"):
        check_finite(state, skip_nonfinite=False)
    check_finite(state, skip_nonfinite=True)


def test_mesh_config_errors_name_the_axes():
    with pytest.raises(ValueError, match="devices"):
        sharding.MeshConfig(data=3, fsdp=1, tensor=1).shape(8)
    with pytest.raises(ValueError, match="at most one"):
        sharding.MeshConfig(data=-1, fsdp=-1, tensor=1).shape(8)
    assert sharding.MeshConfig(data=2, fsdp=-1, tensor=2).shape(8) == (2, 2, 2)


def test_indivisible_dimensions_are_replicated():
    mesh = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=2, tensor=4))
    spec = sharding.logical_to_spec(("kv_heads", "embed"), (2, 32), mesh)
    assert spec == jax.sharding.PartitionSpec(None, "fsdp")
    with pytest.raises(ValueError, match="no partition rule"):
        sharding.logical_to_spec(("bogus",), (4,), mesh)


def test_mean_pooled_reward_step_runs_and_learns_direction():
    mesh = _single_device_mesh()
    state, shardings, graphdef = init_state(tiny_reward_model, TX, mesh)
    config = dataclasses.replace(RM, pooling="mean")
    loss = functools.partial(reward.reward_pair_loss, graphdef=graphdef, config=config)
    step = state_lib.jit_train_step(loss, TX, shardings, mesh)
    batch = pair_batch(0)
    first = None
    for _ in range(5):
        state, metrics = step(state, sharding.shard_batch(batch, mesh))
        first = float(metrics["loss"]) if first is None else first
    assert float(metrics["loss"]) < first
