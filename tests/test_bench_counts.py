"""The FLOP and byte counts the GPU benchmarks divide by (benchmarks/bench_common.py)."""

import pathlib
import sys

import pytest
import torch
import transformers

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_common as bc


def test_matrix_count_matches_qwen2_published_sizes():
    """Matrices + embedding, plus the q/k/v biases and norm scales our count leaves out, give
    the published parameter counts of Qwen2-0.5B and Qwen2-1.5B."""
    for name, published in (("gpu", 494_032_768), ("gpu-1.5b", 1_543_714_304)):
        p = bc.PROFILES[name]
        k = p["width"] // p["heads"]
        matrices = p["layers"] * bc._layer_params(p) + p["vocab"] * p["width"]
        biases = p["layers"] * (p["heads"] + 2 * p["kv_heads"]) * k
        norms = (2 * p["layers"] + 1) * p["width"]
        assert matrices + biases + norms == published, name


def test_layer_params_equal_the_hf_model_matrices():
    """Against the 2-D weights of the HF model the benchmarks write (cpu profile)."""
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(bc.hf_config())
    layer0 = model.model.layers[0]
    counted = sum(w.numel() for w in layer0.parameters() if w.ndim == 2)
    assert counted == bc._layer_params(bc.PROFILES["cpu"])


def test_train_step_flops_closed_form():
    p = dict(bc.PROFILES["cpu"], layers=1, width=4, heads=2, kv_heads=1, mlp=8, vocab=10)
    p.update(train_batch=3, prompt_len=2, response_len=3)
    # One layer: q 4·4 + o 4·4 + k, v 4·2 each + MLP 3·4·8 = 144 matrix parameters.
    # Per token forward: 2·144 + attention 2·T·d = 2·5·4 → 328; 15 tokens; head 3·3·2·4·10.
    assert bc.train_step_flops("sft", p) == 3 * (15 * 328 + 720)
    assert bc.train_step_flops("reward_unpacked", p) == 3 * (30 * 328)
    # Packed pairs: 3 rows of 5 + 3 = 8 tokens; per token 2·144 + attention 2·8·4 = 352.
    assert bc.train_step_flops("reward", p) == 3 * (24 * 352)
    with pytest.raises(ValueError, match="no FLOP count"):
        bc.train_step_flops("dpo", p)


def test_decode_step_bytes_closed_form():
    p = dict(bc.PROFILES["gpu"], layers=1, width=4, heads=2, kv_heads=1, mlp=8, vocab=10)
    # bf16: (144 matrix + 40 embedding + cache 2·1·batch 3·1 KV head·slots 5·head dim 2) · 2.
    assert bc.decode_step_bytes(p, batch=3, slots=5) == 2 * (144 + 40 + 60)
