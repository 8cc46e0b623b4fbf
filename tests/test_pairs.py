"""Prompt-shared packing of preference pairs: the packed layout, and reward/DPO results and
gradients equal to the unpacked forward's (itself checked against float64 references)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_response_window import _f64_response_logprobs, _ragged_pairs, _with_window
from training_testing import TINY, tiny_lm, tiny_reward_model

from rlhf_jax import data
from rlhf_jax.training import dpo, pairs, reward

PREFIXES = ("chosen_", "rejected_")


def _closed_form_batch():
    """One pair: prompt [5, 6], chosen [7, 8, 2], rejected [9, 2]; T = 6, W = 3; plus a filler."""
    chosen = np.array([[5, 6, 7, 8, 2, 0], [0] * 6], np.int32)
    rejected = np.array([[5, 6, 9, 2, 0, 0], [0] * 6], np.int32)
    batch = {"example_mask_B": np.array([1.0, 0.0], np.float32)}
    for side, tokens, n in (("chosen", chosen, 5), ("rejected", rejected, 4)):
        attn = np.zeros((2, 6), bool)
        attn[0, :n] = True
        batch[f"{side}_tokens_BxT"] = tokens
        batch[f"{side}_attn_mask_BxT"] = attn
        batch[f"{side}_loss_mask_BxT"] = attn & (np.arange(6) >= 2)
        batch[f"{side}_positions_BxT"] = np.maximum(np.cumsum(attn, -1) - 1, 0).astype(np.int32)
    return _with_window(batch, 3, PREFIXES)


def test_pack_closed_form():
    p = jax.tree.map(np.asarray, pairs.pack(_closed_form_batch()))
    assert p["tokens_BxL"][0].tolist() == [5, 6, 7, 8, 2, 0, 9, 2, 0]
    assert p["positions_BxL"][0].tolist() == [0, 1, 2, 3, 4, 4, 2, 3, 0]  # pads: masked
    assert p["attn_mask_BxL"][0].tolist() == [1, 1, 1, 1, 1, 0, 1, 1, 0]
    mask = p["mask_BxLxL"][0].astype(int)
    assert mask[6].tolist() == [1, 1, 0, 0, 0, 0, 1, 0, 0]  # rejected "9": prompt and itself
    assert mask[7].tolist() == [1, 1, 0, 0, 0, 0, 1, 1, 0]  # rejected EOS
    assert mask[4].tolist() == [1, 1, 1, 1, 1, 0, 0, 0, 0]  # chosen EOS: its own row only
    np.testing.assert_array_equal(mask[:6, :6], np.tril(np.ones((6, 6))) * [1, 1, 1, 1, 1, 0])
    assert p["chosen_scores_at_B"][0] == 4 and p["rejected_scores_at_B"][0] == 7
    assert p["chosen_predictors_BxW"][0].tolist() == [1, 2, 3]
    assert p["chosen_targets_BxW"][0].tolist() == [7, 8, 2]
    assert p["rejected_predictors_BxW"][0].tolist() == [1, 6, 0]  # last prompt token, then "9"
    assert p["rejected_targets_BxW"][0].tolist() == [9, 2, 0]
    assert p["rejected_mask_BxW"][0].tolist() == [1, 1, 0]
    assert p["chosen_response_BxL"][0].astype(int).tolist() == [0, 0, 1, 1, 1, 0, 0, 0, 0]
    assert p["rejected_response_BxL"][0].astype(int).tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 0]
    assert not p["chosen_mask_BxW"][1].any() and not p["rejected_mask_BxW"][1].any()
    assert float(p["unshared_prompts"]) == 0.0


def test_pack_counts_pairs_whose_prompts_differ():
    batch = _closed_form_batch()
    batch["rejected_tokens_BxT"] = batch["rejected_tokens_BxT"].copy()
    batch["rejected_tokens_BxT"][0, 1] = 4  # another prompt token
    assert float(pairs.pack(batch)["unshared_prompts"]) == 1.0
    longer = _closed_form_batch()  # the rejected prompt one token longer: [5, 6, 9] | [2]
    longer["rejected_loss_mask_BxT"] = longer["rejected_attn_mask_BxT"] & (np.arange(6) >= 3)
    longer = _with_window(longer, 3, PREFIXES)
    assert float(pairs.pack(longer)["unshared_prompts"]) == 1.0


def test_pack_needs_the_window_keys():
    batch = _closed_form_batch()
    del batch["rejected_window_BxW"]
    assert not pairs.can_pack(batch)
    with pytest.raises(ValueError, match="rejected_window_BxW"):
        pairs.pack(batch)


def test_explicit_causal_mask_equals_the_built_one():
    model = tiny_lm(0)
    batch = _ragged_pairs(2)
    kw = dict(
        positions_BxT=jnp.asarray(batch["chosen_positions_BxT"]),
        attn_mask_BxT=jnp.asarray(batch["chosen_attn_mask_BxT"]),
    )
    tokens = jnp.asarray(batch["chosen_tokens_BxT"])
    t = tokens.shape[1]
    mask = jnp.tril(jnp.ones((t, t), bool))[None] & kw["attn_mask_BxT"][:, None, :]
    np.testing.assert_array_equal(
        model.hidden_states(tokens, **kw), model.hidden_states(tokens, **kw, mask_BxTxT=mask)
    )
    with pytest.raises(ValueError, match="mask_BxTxT has shape"):
        model.hidden_states(tokens, **kw, mask_BxTxT=mask[:, :-1])


# Qwen3-like: q/k norms, the second layer sliding with a window shorter than the rows, so the
# packed rejected segment must see by position what it would see alone.
SLIDING = TINY.replace(
    model_type="qwen3", qk_norm=True, sliding_window=3,
    layer_types=("full_attention", "sliding_attention"),
)  # fmt: skip


@pytest.mark.parametrize(("seed", "config"), [(0, TINY), (1, TINY), (0, SLIDING)],
                         ids=["seed0", "seed1", "sliding"])  # fmt: skip
def test_packed_dpo_logprobs_loss_and_gradients_equal_unpacked(seed, config):
    model = tiny_lm(3, config)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    batch = _with_window(_ragged_pairs(seed), 8, PREFIXES)
    batch["example_mask_B"][-1] = 0.0  # a filler row: its masks stay as they are, weight 0
    pair = jax.jit(functools.partial(dpo.pair_logprobs, graphdef, share_prompt=True))
    (pc, pr), (lc, lr), unshared = pair(params, rest, batch)
    assert float(unshared) == 0.0
    np.testing.assert_allclose(pc, _f64_response_logprobs(model, batch, "chosen_"), rtol=1e-5)
    np.testing.assert_allclose(pr, _f64_response_logprobs(model, batch, "rejected_"), rtol=1e-5)
    np.testing.assert_array_equal(lc, batch["chosen_loss_mask_BxT"].sum(-1))
    np.testing.assert_array_equal(lr, batch["rejected_loss_mask_BxT"].sum(-1))

    frozen = {"rest": rest, "extra": jax.tree.map(lambda x: x * 0.9, params)}
    value = {}
    for share in (False, True):
        config = dpo.DPOLossConfig(share_prompt=share)
        loss = functools.partial(dpo.dpo_step_loss, graphdef=graphdef, config=config)
        value[share] = jax.jit(
            jax.value_and_grad(lambda p, b, f=loss: f(p, frozen, b, None), has_aux=True)
        )(params, batch)
    (l0, (w0, m0)), g0 = value[False]
    (l1, (w1, m1)), g1 = value[True]
    np.testing.assert_allclose(l1, l0, rtol=1e-5)
    assert float(w1) == float(w0) == 5.0
    assert float(m1["unshared_prompts"]) == 0.0 and "unshared_prompts" not in m0
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
        np.testing.assert_allclose(b, a, rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_packed_reward_scores_loss_and_gradients_equal_unpacked(pooling):
    model = tiny_reward_model(4)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    batch = _with_window(_ragged_pairs(5), 8, PREFIXES)
    scores = jax.jit(
        functools.partial(reward.pair_scores, graphdef, pooling=pooling, share_prompt=True)
    )
    chosen, rejected, extra = scores(params, rest, batch)
    assert float(extra["unshared_prompts"]) == 0.0
    for side, got in (("chosen", chosen), ("rejected", rejected)):
        # Independent reference: each side's own row through the model, pooled in float64.
        per_token = np.asarray(
            model(
                jnp.asarray(batch[f"{side}_tokens_BxT"]),
                positions_BxT=jnp.asarray(batch[f"{side}_positions_BxT"]),
                attn_mask_BxT=jnp.asarray(batch[f"{side}_attn_mask_BxT"]),
            ),
            np.float64,
        )
        if pooling == "last":
            last = batch[f"{side}_attn_mask_BxT"].sum(-1) - 1
            want = per_token[np.arange(len(last)), last]
        else:
            m = batch[f"{side}_loss_mask_BxT"]
            want = (per_token * m).sum(-1) / m.sum(-1)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    def loss_and_grads(model, share):
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        loss = functools.partial(
            reward.reward_pair_loss,
            graphdef=graphdef,
            config=reward.RewardLossConfig(pooling=pooling, share_prompt=share),
        )
        f = jax.value_and_grad(lambda p, b: loss(p, {"rest": rest}, b, None), has_aux=True)
        return jax.jit(f)(params, batch)

    (l0, (_, m0)), g0 = loss_and_grads(model, False)
    (l1, (_, m1)), g1 = loss_and_grads(model, True)
    np.testing.assert_allclose(l1, l0, rtol=1e-5)
    np.testing.assert_allclose(m1["reward_mean"], m0["reward_mean"], rtol=1e-5, atol=1e-6)
    # Both float32 gradients against the unpacked gradient in float64. A gradient entry is a sum
    # over every token of the batch, and float32 rounds each term, so an entry near zero by
    # cancellation carries an error of the size of its terms, not of itself: the bound is
    # relative to the leaf's largest entry. (Packed and unpacked sum in different orders; on
    # an AMD EPYC one entry of 4.2e-4 in a leaf of scale 0.14 differed by 1.2e-7 between them.)
    with jax.enable_x64(True):
        f64 = TINY.replace(dtype="float64", param_dtype="float64")
        model64 = tiny_reward_model(4, config=f64)
        nnx.update(model64, jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params))
        (l64, _), g64 = loss_and_grads(model64, False)
        g64 = [np.asarray(x, np.float64) for x in jax.tree.leaves(g64)]
    np.testing.assert_allclose(l0, l64, rtol=1e-6)
    for got in (g0, g1):
        for a, want in zip(jax.tree.leaves(got), g64, strict=True):
            scale = np.max(np.abs(want))
            np.testing.assert_allclose(a, want, rtol=1e-5, atol=2e-6 * scale)


def test_without_window_keys_share_prompt_takes_the_unpacked_path_with_the_same_metrics():
    graphdef, params, rest = nnx.split(tiny_lm(0), nnx.Param, ...)
    batch = _ragged_pairs(0)  # no window keys: e.g. a batch whose responses fill the bucket
    got = dpo.pair_logprobs(graphdef, params, rest, batch, share_prompt=True)
    want = dpo.pair_logprobs(graphdef, params, rest, batch)
    assert float(got[2]) == 0.0 and want[2] is None
    np.testing.assert_array_equal(got[0], want[0])
    # The metric keys do not depend on the path, so evaluation can sum over mixed batches.
    windowed = _with_window(batch, 8, PREFIXES)
    rm_graphdef, rm_params, rm_rest = nnx.split(tiny_reward_model(0), nnx.Param, ...)
    steps = [
        functools.partial(
            dpo.dpo_step_loss,
            params,
            {"rest": rest, "extra": params},
            graphdef=graphdef,
            config=dpo.DPOLossConfig(share_prompt=True),
        ),
        functools.partial(
            reward.reward_pair_loss,
            rm_params,
            {"rest": rm_rest},
            graphdef=rm_graphdef,
            config=reward.RewardLossConfig(share_prompt=True),
        ),
    ]
    for step in steps:
        keys = [set(step(b, None)[1][1]) for b in (batch, windowed)]
        assert keys[0] == keys[1] and "unshared_prompts" in keys[0]


def test_collated_pairs_pack_with_shared_prompts():
    from test_data_iterator import make_dataset

    ds = make_dataset([20, 3, 7], [5, 6, 1], bucket_lengths=(8, 16, 32), kind="preference")
    batch = data.collate(ds, [0, 1, 2, -1], length=32, window=8)
    assert float(pairs.pack(batch)["unshared_prompts"]) == 0.0
