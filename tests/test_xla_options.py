"""The training programs' XLA options: when they apply, and that they change speed, not results."""

import functools

import jax
import numpy as np
import optax
import pytest
from training_testing import RM, init_state, pair_batch, sft_batch, tiny_lm, tiny_reward_model

from rlhf_jax import sharding, xla_options
from rlhf_jax.training import reward, sft
from rlhf_jax.training import state as state_lib

KEY = "xla_cpu_experimental_ynn_fusion_type"


def test_options_apply_on_cpu_unless_the_user_chose():
    assert xla_options._wanted("cpu", "", "1") == xla_options.CPU_OPTIONS
    assert xla_options._wanted("gpu", "", "1") == {}
    assert xla_options._wanted("tpu", "", "") == {}
    # The user's own XLA_FLAGS setting of the same option wins.
    assert (
        xla_options._wanted("cpu", f"--xla_force_host_platform_device_count=8 --{KEY}=", "1") == {}
    )
    assert xla_options._wanted("cpu", "--xla_force_host_platform_device_count=8", "1") == (
        xla_options.CPU_OPTIONS
    )
    for off in ("0", "false", "OFF", " no "):
        assert xla_options._wanted("cpu", "", off) == {}


def test_this_jaxlib_accepts_the_options(monkeypatch):
    monkeypatch.delenv(xla_options.ENV_SWITCH, raising=False)
    monkeypatch.setenv("XLA_FLAGS", "")
    assert jax.default_backend() == "cpu"
    assert xla_options.compiler_options() == xla_options.CPU_OPTIONS
    monkeypatch.setenv(xla_options.ENV_SWITCH, "0")
    assert xla_options.compiler_options() is None


def test_an_option_the_compiler_refuses_is_dropped_with_a_warning():
    with pytest.warns(UserWarning, match="not used"):
        assert not xla_options._supported((("xla_cpu_no_such_option", "1"),))


def _one_step(model_fn, loss_fn, batch, monkeypatch, switch):
    monkeypatch.setenv(xla_options.ENV_SWITCH, switch)
    mesh = sharding.make_mesh(sharding.MeshConfig(1, 1, 1), devices=jax.devices()[:1])
    tx = optax.sgd(0.5)
    state, shardings, graphdef = init_state(model_fn, tx, mesh)
    step = state_lib.jit_train_step(
        functools.partial(loss_fn, graphdef=graphdef), tx, shardings, mesh
    )
    hlo = step.lower(state, sharding.shard_batch(batch, mesh)).compile().as_text()
    state, metrics = step(state, sharding.shard_batch(batch, mesh))
    return jax.device_get(state.params), jax.device_get(metrics), hlo


@pytest.mark.parametrize(
    "model_fn, loss_fn, batch_fn",
    [
        (tiny_lm, sft.sft_loss, sft_batch),
        (tiny_reward_model, functools.partial(reward.reward_pair_loss, config=RM), pair_batch),
    ],
    ids=["sft", "reward"],
)
def test_options_change_the_program_not_the_step(model_fn, loss_fn, batch_fn, monkeypatch):
    batch = batch_fn(0)
    p_on, m_on, hlo_on = _one_step(model_fn, loss_fn, batch, monkeypatch, "1")
    p_off, m_off, hlo_off = _one_step(model_fn, loss_fn, batch, monkeypatch, "0")
    # The options reached the compiler: YNNPACK fusions hold the dots alone, so the compiled
    # program mentions them less often (the text itself differs between any two compiles).
    assert 0 < hlo_on.count("ynn") < hlo_off.count("ynn")
    np.testing.assert_allclose(m_on["loss"], m_off["loss"], rtol=1e-6)
    np.testing.assert_allclose(m_on["grad_norm"], m_off["grad_norm"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(p_on), jax.tree.leaves(p_off), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
