"""Response-window logits: the data layer's window keys and the LM losses computed on them.

The sharded and gradient-accumulated DPO/SimPO steps of test_training_steps.py run on windowed
batches too."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_data_iterator import make_dataset
from training_testing import tiny_lm

from rlhf_jax import data
from rlhf_jax.training import dpo, sft


def test_window_indices_closed_form():
    loss = np.array(
        [
            [0, 0, 1, 1, 0, 0],  # prompt of 2, response of 2
            [0, 1, 1, 1, 1, 1],  # prompt of 1, response of 5
            [0, 0, 0, 0, 0, 0],  # a filler row
        ],
        bool,
    )
    window, mask = data.window_indices(loss, 5)
    assert window.tolist() == [[1, 2, 0, 0, 0], [0, 1, 2, 3, 4], [0, 0, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]]
    assert window.dtype == np.int32 and mask.dtype == bool


def test_window_indices_reject_what_they_cannot_hold():
    with pytest.raises(ValueError, match="row 1 has 5 response tokens; the window holds 4"):
        data.window_indices(np.array([[0, 1, 0, 0, 0, 0], [0, 1, 1, 1, 1, 1]], bool), 4)
    with pytest.raises(ValueError, match="contiguous"):
        data.window_indices(np.array([[0, 1, 0, 1]], bool), 3)
    with pytest.raises(ValueError, match=r"loss_mask\[:, 0\]"):
        data.window_indices(np.array([[1, 1, 0, 0]], bool), 3)


def test_response_window_is_the_smallest_bucket_holding_the_longest_response():
    ds = make_dataset([20, 3, 2], [5, 9, 20], bucket_lengths=(8, 16, 32))
    assert ds.examples[0].length == 32
    assert data.response_window(ds, [0], length=32) == 8  # 5 tokens: bucket 8
    assert data.response_window(ds, [0, 1, -1], length=32) == 16  # 9 tokens: bucket 16
    # 20 tokens: bucket 32, not shorter than the 31 positions of the full window.
    assert data.response_window(ds, [0, 2], length=32) is None
    assert data.response_window(ds, [1], length=16) is None


@pytest.mark.parametrize("kind", ["sft", "preference"])
def test_collate_window_marks_the_positions_that_predict_the_response(kind):
    ds = make_dataset([20, 3, 7], [5, 6, 1], bucket_lengths=(8, 16, 32), kind=kind)
    batch = data.collate(ds, [0, 1, 2, -1], length=32, window=8)
    prefixes = ("chosen_", "rejected_") if kind == "preference" else ("",)
    for prefix in prefixes:
        tokens, loss = batch[f"{prefix}tokens_BxT"], batch[f"{prefix}loss_mask_BxT"]
        window, mask = batch[f"{prefix}window_BxW"], batch[f"{prefix}window_mask_BxW"]
        assert window.shape == mask.shape == (4, 8)
        for row in range(4):
            predicted = tokens[row, window[row][mask[row]] + 1]
            assert predicted.tolist() == tokens[row][loss[row]].tolist()
        assert mask.sum(axis=1).tolist() == [5, 6, 1, 0]
    assert "window_BxW" not in data.collate(ds, [0], length=32)


def test_iterator_picks_one_window_for_every_host():
    ds = make_dataset([20] * 6 + [2, 3], [2, 2, 9, 2, 2, 2, 20, 19], bucket_lengths=(8, 16, 32))
    batches = []
    for host in range(2):
        it = data.BatchIterator(
            ds, batch_size=4, seed=0, shuffle=False, process_count=2, process_index=host
        )
        batches.append([next(it) for _ in range(2)])
    for a, b in zip(*batches, strict=True):
        # The global batch's longest response sets W, whichever host holds that row.
        assert (
            a.get("window_BxW", np.zeros((2, 0))).shape
            == b.get("window_BxW", np.zeros((2, 0))).shape
        )
    # Batch 1 (responses 2, 2 | 9, 2): host 0's rows alone would take W = 8; batch 2 (2, 2 |
    # 20, 19) needs the whole bucket, so it has no window.
    assert [b.get("window_BxW", np.zeros((2, 0))).shape[1] for b in batches[0]] == [16, 0]
    off = data.BatchIterator(ds, batch_size=4, process_count=1, process_index=0,
                             response_window=False)  # fmt: skip
    assert not any("window_BxW" in next(off) for _ in range(2))


def _ragged_pairs(seed, batch=6, length=24, vocab=64):
    """Preference rows with ragged prompts (1..12) and responses (1..8), right-padded."""
    rng = np.random.default_rng(seed)
    out = {}
    prompts = rng.integers(1, 13, batch)
    for side in ("chosen", "rejected"):
        responses = rng.integers(1, 9, batch)
        positions = np.broadcast_to(np.arange(length), (batch, length))
        attn = positions < (prompts + responses)[:, None]
        loss = attn & (positions >= prompts[:, None])
        tokens = np.where(attn, rng.integers(1, vocab, (batch, length)), 0).astype(np.int32)
        out.update(
            {
                f"{side}_tokens_BxT": tokens,
                f"{side}_positions_BxT": np.where(attn, positions, 0).astype(np.int32),
                f"{side}_attn_mask_BxT": attn,
                f"{side}_loss_mask_BxT": loss,
            }
        )
    out["rejected_tokens_BxT"][:, :12] = np.where(
        out["rejected_attn_mask_BxT"][:, :12] & ~out["rejected_loss_mask_BxT"][:, :12],
        out["chosen_tokens_BxT"][:, :12],
        out["rejected_tokens_BxT"][:, :12],
    )
    out["example_mask_B"] = np.ones(batch, np.float32)
    return out


def _with_window(batch, width, prefixes):
    batch = dict(batch)
    for prefix in prefixes:
        window, mask = data.window_indices(batch[f"{prefix}loss_mask_BxT"], width)
        batch[f"{prefix}window_BxW"], batch[f"{prefix}window_mask_BxW"] = window, mask
    return batch


def _f64_response_logprobs(model, batch, prefix):
    """Independent reference: float64 log-softmax of the full logits, summed over the mask."""
    logits = np.asarray(
        model(
            jnp.asarray(batch[f"{prefix}tokens_BxT"]),
            positions_BxT=jnp.asarray(batch[f"{prefix}positions_BxT"]),
            attn_mask_BxT=jnp.asarray(batch[f"{prefix}attn_mask_BxT"]),
        ),
        np.float64,
    )[:, :-1]
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    targets = batch[f"{prefix}tokens_BxT"][:, 1:]
    token = np.take_along_axis(logits, targets[..., None], -1)[..., 0] - logz
    return np.where(batch[f"{prefix}loss_mask_BxT"][:, 1:], token, 0.0).sum(-1)


def test_windowed_dpo_logprobs_and_gradients_equal_the_full_computation():
    model = tiny_lm(3)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    full = _ragged_pairs(0)
    windowed = _with_window(full, 8, ("chosen_", "rejected_"))
    pair = jax.jit(functools.partial(dpo.pair_logprobs, graphdef))
    (fc, fr), (lc, lr), _ = pair(params, rest, full)
    (wc, wr), (wlc, wlr), _ = pair(params, rest, windowed)
    np.testing.assert_allclose(fc, _f64_response_logprobs(model, full, "chosen_"), rtol=1e-5)
    np.testing.assert_allclose(fr, _f64_response_logprobs(model, full, "rejected_"), rtol=1e-5)
    np.testing.assert_allclose(wc, fc, rtol=1e-6)
    np.testing.assert_allclose(wr, fr, rtol=1e-6)
    np.testing.assert_array_equal(wlc, lc)
    np.testing.assert_array_equal(wlr, lr)

    frozen = {"rest": rest, "extra": jax.tree.map(lambda x: x * 0.9, params)}
    config = dpo.DPOLossConfig(share_prompt=False)
    loss = functools.partial(dpo.dpo_step_loss, graphdef=graphdef, config=config)
    grad = jax.jit(jax.grad(lambda p, b: loss(p, frozen, b, None)[0]))
    for a, b in zip(
        jax.tree.leaves(grad(params, full)), jax.tree.leaves(grad(params, windowed)), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)


def test_windowed_sft_loss_metrics_and_gradients_equal_the_full_computation():
    graphdef, params, rest = nnx.split(tiny_lm(1), nnx.Param, ...)
    rows = _ragged_pairs(1)
    full = {k[len("chosen_") :]: v for k, v in rows.items() if k.startswith("chosen_")}
    windowed = _with_window(full, 8, ("",))
    loss = jax.jit(
        jax.value_and_grad(
            lambda p, b: sft.sft_loss(p, {"rest": rest}, b, None, graphdef=graphdef),
            has_aux=True,
        )
    )
    (l_full, (n_full, m_full)), g_full = loss(params, full)
    (l_win, (n_win, m_win)), g_win = loss(params, windowed)
    np.testing.assert_allclose(l_win, l_full, rtol=1e-6)
    assert float(n_win) == float(n_full) == full["loss_mask_BxT"].sum()
    np.testing.assert_allclose(m_win["token_accuracy"], m_full["token_accuracy"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g_full), jax.tree.leaves(g_win), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)
