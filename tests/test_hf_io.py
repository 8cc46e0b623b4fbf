"""HF checkpoint import/export: round trips through transformers, sharded indexes, bfloat16
files, clear errors for bad checkpoints, and the tokenizer helpers."""

import json
import shutil

import numpy as np
import pytest
import tokenizers
import torch
import transformers
from flax import nnx
from model_testing import ARCHS, forward, hf_checkpoint, hf_logits, make_hf_model, random_batch
from safetensors.numpy import load_file, save_file

from rlhf_jax.models import (
    CheckpointError,
    encode_prompts,
    load_pretrained,
    load_tokenizer,
    save_pretrained,
)


def _params(model):
    return {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model))}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_export_reloads_in_hf_with_the_same_logits(arch, tmp_path):
    directory, hf = hf_checkpoint(arch)
    save_pretrained(load_pretrained(directory), tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reloaded) is type(hf)
    tokens, mask = random_batch(4, 3, 12, pads=[0, 2, 6])
    # The weights round-trip bit for bit, so HF computes exactly the same numbers.
    np.testing.assert_array_equal(hf_logits(reloaded, tokens, mask), hf_logits(hf, tokens, mask))


def test_sharded_checkpoints_load_and_save(tmp_path):
    _, hf = hf_checkpoint("qwen2")
    hf.save_pretrained(tmp_path / "hf", max_shard_size="40KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    assert len(list((tmp_path / "hf").glob("model-*.safetensors"))) > 2
    reference = _params(load_pretrained(hf_checkpoint("qwen2")[0]))
    sharded = load_pretrained(tmp_path / "hf")
    for path, value in _params(sharded).items():
        np.testing.assert_array_equal(value, reference[path], err_msg=str(path))

    save_pretrained(sharded, tmp_path / "ours", max_shard_bytes=40_000)
    assert len(list((tmp_path / "ours").glob("model-*.safetensors"))) > 2
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours")
    for name, value in hf.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], value, rtol=0, atol=0)


def test_bfloat16_checkpoint_loads(tmp_path):
    _, hf = hf_checkpoint("llama")
    make_hf_model("llama").to(torch.bfloat16).save_pretrained(tmp_path)
    model = load_pretrained(tmp_path)
    expected = hf.model.layers[0].self_attn.q_proj.weight.detach().to(torch.bfloat16).float()
    ours = np.asarray(model.trunk.layers.attn.q.kernel[...][0]).reshape(64, 64).T
    np.testing.assert_array_equal(ours, expected.numpy())


def _copy_checkpoint(arch, tmp_path):
    shutil.copytree(hf_checkpoint(arch)[0], tmp_path, dirs_exist_ok=True)
    return load_file(tmp_path / "model.safetensors")


def test_missing_tensor_is_named(tmp_path):
    tensors = _copy_checkpoint("gpt_neox", tmp_path)
    del tensors["gpt_neox.layers.1.attention.query_key_value.weight"]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"'gpt_neox\.layers\.1\.attention\.query_key_value"):
        load_pretrained(tmp_path)


def test_misshaped_tensor_is_named(tmp_path):
    tensors = _copy_checkpoint("llama", tmp_path)
    tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros((16, 64), np.float32)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"k_proj\.weight' has shape \(16, 64\).*\(32, 64\)"):
        load_pretrained(tmp_path)


def test_unknown_architecture_and_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match=r"config\.json does not exist"):
        load_pretrained(tmp_path)
    _copy_checkpoint("llama", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"model_type": "mamba"}))
    with pytest.raises(ValueError, match="model_type 'mamba' is not supported"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"neither model\.safetensors nor"):
        load_pretrained(tmp_path)


def test_gpt2_checkpoint_without_prefix_loads(tmp_path):
    """The original `gpt2` checkpoints name tensors without the `transformer.` prefix."""
    tensors = _copy_checkpoint("gpt2", tmp_path)
    bare = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    save_file(bare, tmp_path / "model.safetensors", metadata={"format": "pt"})
    tokens, mask = random_batch(5, 2, 8)
    np.testing.assert_array_equal(
        forward(load_pretrained(tmp_path), tokens, mask),
        forward(load_pretrained(hf_checkpoint("gpt2")[0]), tokens, mask),
    )


def _tiny_tokenizer(directory, chat_template=None):
    words = ["<pad>", "<s>", "</s>", "hello", "world", "user", "assistant", ":", "the", "end"]
    model = tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="end")
    tok = tokenizers.Tokenizer(model)
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", chat_template=chat_template
    )
    fast.save_pretrained(directory)


def test_tokenizer_left_pads_and_applies_the_chat_template(tmp_path):
    template = (
        "<s> {% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}assistant :{% endif %}"
    )
    _tiny_tokenizer(tmp_path, chat_template=template)
    tokenizer = load_tokenizer(tmp_path)
    assert tokenizer.pad_token == "</s>"  # no pad token: EOS stands in
    tokens, mask = encode_prompts(tokenizer, ["hello", "hello world"], max_length=8)
    # <s> user : hello assistant :   — the template's BOS, no second one added
    np.testing.assert_array_equal(tokens[0], [2, 2, 1, 5, 7, 3, 6, 7])
    np.testing.assert_array_equal(mask[0], [0, 0, 1, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(tokens[1], [2, 1, 5, 7, 3, 4, 6, 7])
    with pytest.raises(ValueError, match="prompt 1 has 7 tokens; max_length is 6"):
        encode_prompts(tokenizer, ["hello", "hello world"], max_length=6)


def test_tokenizer_without_chat_template_encodes_plain_text(tmp_path):
    _tiny_tokenizer(tmp_path)
    tokenizer = load_tokenizer(tmp_path)
    tokens, mask = encode_prompts(tokenizer, ["hello world the end"], max_length=5)
    np.testing.assert_array_equal(tokens[0][mask[0]], [3, 4, 8, 9])
    with pytest.raises(ValueError, match="no chat template"):
        encode_prompts(tokenizer, [[{"role": "user", "content": "hello"}]], max_length=5)
