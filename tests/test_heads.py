"""Reward and value heads: last-valid-token reads, initialisation, shared and separate critics,
and export to HF sequence classification."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from model_testing import (
    ARCHS,
    assert_rel_close,
    forward,
    hf_checkpoint,
    make_hf_model,
    random_batch,
)

from rlhf_jax.models import (
    CausalLM,
    ScalarHead,
    ScalarModel,
    at_last_valid,
    from_hf_dict,
    load_pretrained,
    load_scalar_model,
    pool_scores,
    save_pretrained,
)


def _right_padded(seed, lengths, width):
    tokens, _ = random_batch(seed, len(lengths), width)
    mask = np.arange(width)[None, :] < np.asarray(lengths)[:, None]
    tokens[~mask] = 0  # the pad id of the test checkpoints
    return tokens, mask


def test_at_last_valid_reads_the_last_real_token():
    values = jnp.arange(12.0).reshape(3, 4)
    left = jnp.array([[0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1]], bool)
    right = jnp.array([[1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]], bool)
    np.testing.assert_array_equal(at_last_valid(values, left), [3.0, 7.0, 11.0])
    np.testing.assert_array_equal(at_last_valid(values, right), [1.0, 6.0, 8.0])


def test_reward_is_the_same_for_left_right_and_no_padding():
    """Padding changes the matrix shapes and so the float32 summation order. The trunk's hidden
    state at the scored token agrees to 1e-5 of its scale. The score is a dot product h·w whose
    terms cancel (here Σ|hᵢwᵢ| ≈ 300 |h·w|), so its rounding error is bounded by Σ|hᵢwᵢ|, not by
    |h·w|: it agrees to 1e-5 of that."""
    model = load_scalar_model(hf_checkpoint("llama")[0], kind="reward")
    tokens, _ = random_batch(0, 1, 6)
    ones = np.ones_like(tokens, bool)
    alone = forward(model, tokens, ones, method="score")
    h_alone = forward(model.trunk, tokens, ones)[0][:, -1]
    w = np.asarray(model.head.kernel[...]).reshape(-1)
    terms = np.sum(np.abs(h_alone * w[None]), axis=-1)
    left = np.concatenate([np.zeros((1, 3), np.int32), tokens], axis=1)
    left_mask = np.arange(9)[None] >= 3
    right = np.concatenate([tokens, np.zeros((1, 3), np.int32)], axis=1)
    for toks, mask, last in [(left, left_mask, 8), (right, left_mask[:, ::-1], 5)]:
        assert_rel_close(forward(model.trunk, toks, mask)[0][:, last], h_alone, rel=1e-5)
        err = np.abs(forward(model, toks, mask, method="score") - alone)
        assert np.all(err <= 1e-5 * terms), (err, terms)


def test_head_initialisation():
    cfg = from_hf_dict(ARCHS["llama"]().to_dict()).replace(hidden_size=4095)
    reward = ScalarHead(cfg, kind="reward", rngs=nnx.Rngs(0))
    std = float(jnp.std(reward.kernel[...]))
    assert abs(std * np.sqrt(4096) - 1) < 0.05  # N(0, 1/√(D+1))
    assert reward.bias is None
    value = ScalarHead(cfg, kind="value", rngs=nnx.Rngs(0))
    assert not np.any(value.kernel[...]) and float(value.bias[...]) == 0.0
    with pytest.raises(ValueError, match="kind must be"):
        ScalarHead(cfg, kind="critic", rngs=nnx.Rngs(0))


def test_value_head_on_the_lm_trunk_and_separate_critic_copies_it():
    lm = load_pretrained(hf_checkpoint("qwen2")[0])
    assert isinstance(lm, CausalLM)
    tokens, mask = random_batch(1, 2, 7, pads=[0, 3])
    logits = forward(lm, tokens, mask)
    # A value head alone on the policy's hidden states (PPO's value_model="shared").
    head = ScalarHead(lm.config, kind="value", rngs=nnx.Rngs(0))
    h = forward(lm, tokens, mask, method="hidden_states")
    np.testing.assert_array_equal(head(jnp.asarray(h)), 0.0)  # zero-initialised value head

    critic = ScalarModel.from_trunk(lm.trunk, kind="value", rngs=nnx.Rngs(0))
    critic.trunk.final_norm.scale[...] = jnp.zeros(64)  # a copy: the LM must not change
    np.testing.assert_array_equal(forward(lm, tokens, mask), logits)


def test_pool_scores_last_token_and_response_mean_closed_form():
    scores = jnp.array([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    attn = jnp.array([[1, 1, 1, 0], [0, 1, 1, 1]], bool)  # right- and left-padded
    response = jnp.array([[0, 1, 1, 0], [0, 0, 1, 1]], bool)
    np.testing.assert_array_equal(pool_scores(scores, attn, response, "last"), [3.0, 8.0])
    np.testing.assert_array_equal(pool_scores(scores, attn, response, "mean"), [2.5, 7.5])
    with pytest.raises(ValueError, match="pooling"):
        pool_scores(scores, attn, response, "max")
    with pytest.raises(ValueError, match="response mask"):
        pool_scores(scores, attn, None, "mean")


@pytest.mark.parametrize("arch", list(ARCHS))
def test_reward_model_exports_as_hf_sequence_classifier(arch, tmp_path):
    reward = load_scalar_model(hf_checkpoint(arch)[0], kind="reward", seed=3)
    save_pretrained(reward, tmp_path)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert hf.config.num_labels == 1
    assert type(hf).__name__.endswith("ForSequenceClassification")
    tokens, mask = _right_padded(2, [9, 4, 6], 9)
    with torch.no_grad():
        expected = hf(
            torch.from_numpy(tokens.astype(np.int64)),
            attention_mask=torch.from_numpy(mask.astype(np.int64)),
        ).logits[:, 0]
    assert_rel_close(forward(reward, tokens, mask, method="score"), expected.numpy(), rel=1e-5)


def test_reward_model_and_critic_load_from_a_classifier_checkpoint(tmp_path):
    hf = make_hf_model(
        "gpt_neox", seed=5, cls=transformers.AutoModelForSequenceClassification, num_labels=1
    )
    hf.save_pretrained(tmp_path)
    tokens, mask = _right_padded(3, [8, 5], 8)
    with torch.no_grad():
        expected = hf(
            torch.from_numpy(tokens.astype(np.int64)),
            attention_mask=torch.from_numpy(mask.astype(np.int64)),
        ).logits[:, 0]
    reward = load_scalar_model(tmp_path, kind="reward")
    assert_rel_close(forward(reward, tokens, mask, method="score"), expected.numpy(), rel=1e-5)

    # A critic initialised from the reward model: same trunk and head weights, bias 0.
    critic = load_scalar_model(tmp_path, kind="value")
    np.testing.assert_array_equal(critic.head.kernel[...], reward.head.kernel[...])
    assert float(critic.head.bias[...]) == 0.0
    fresh = load_scalar_model(tmp_path, kind="value", fresh_head=True)
    assert not np.any(fresh.head.kernel[...])
    with pytest.raises(ValueError, match="only reward models"):
        save_pretrained(critic, tmp_path / "critic")
