"""RL as a phase on a user's own models: configs/ppo.py through the entry point, on a tiny
HF checkpoint with a chat template, chat prompts, a reward model and a reward function."""

import dataclasses
import importlib.util
import pathlib

import jax
import numpy as np
import pytest
import transformers
from data_testing import IM_END, VOCAB, make_tokenizer, write_jsonl
from flax import nnx
from training_testing import TINY

from rlhf_jax import models, placement, sharding
from rlhf_jax.presets.rl import RL_VARIANTS
from rlhf_jax.training.config import build
from rlhf_jax.training.entry import run_ppo_from_config
from rlhf_jax.training.ppo import PPORunConfig, run_ppo

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODEL = dataclasses.replace(TINY, model_type="qwen2", qkv_bias=True, eos_token_ids=(IM_END,))
assert len(VOCAB) <= MODEL.vocab_size


def load_config(arg):
    spec = importlib.util.spec_from_file_location("config_ppo", ROOT / "configs" / "ppo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    """What a user brings: an HF policy and reward model (save_pretrained), a chat tokenizer,
    and chat prompts with reference answers."""
    root = tmp_path_factory.mktemp("rl_user")
    tokenizer = make_tokenizer(root / "policy", chat=True)
    models.save_pretrained(models.CausalLM(MODEL, rngs=nnx.Rngs(0)), root / "policy")
    rm = models.ScalarModel(MODEL, kind="reward", rngs=nnx.Rngs(1))
    models.save_pretrained(rm, root / "rm", tokenizer=tokenizer)
    questions = ["what is 2 + 2", "how are you", "is the world good", "what is a yes"]
    answers = ["four", "fine thanks", "yes", "yes"]
    rows = [
        {"prompt": [{"role": "user", "content": q}], "answer": a}
        for q, a in zip(questions * 4, answers * 4, strict=True)
    ]
    write_jsonl(root / "prompts.jsonl", rows)
    return root


def _users_config(root, run_dir, arg="smoke"):
    c = load_config(arg)
    c.run_dir = str(run_dir)
    c.policy.hf_path = str(root / "policy")  # replaces the preset's random init
    c.policy.tokenizer = str(root / "policy")
    if arg == "smoke":
        c.reward.hf_path = str(root / "rm")
        c.reward.tokenizer = str(root / "rm")  # not the preset's: it reads the policy's ids
    c.prompts = str(root / "prompts.jsonl")
    c.prompt_length = 16
    c.rewards.kwargs.exact_match.column = "answer"
    c.iterations = 3
    c.checkpoint.save_every = 1
    c.mesh.num_devices = 1
    c.console = c.tensorboard = False
    return c


def test_every_rl_variant_builds_a_typed_config():
    for variant in RL_VARIANTS:
        config = build(PPORunConfig, load_config(variant).to_dict())
        assert (config.reward is None) == variant.startswith("grpo"), variant
        if variant.startswith("grpo"):
            assert config.ppo.initial_kl_coef == 0.0 and config.ppo.samples_per_prompt > 1
    with pytest.raises(ValueError, match="variant"):
        load_config("ppo9")


def test_ppo_on_a_users_checkpoint_exports_to_hf(user_files, tmp_path):
    result = run_ppo_from_config(_users_config(user_files, tmp_path / "ppo"))
    assert result["status"] == "finished" and result["iteration"] == 3
    row = result["history"][-1]
    assert {"rewards/reward_model/mean", "rewards/exact_match/mean"} <= set(row)
    assert (tmp_path / "ppo" / "logs" / "metrics.jsonl").exists()
    # The trained policy goes back out as an HF checkpoint.
    mesh = sharding.make_mesh(sharding.MeshConfig(num_devices=1))
    policy = placement.place_model(str(tmp_path / "ppo" / "artifact"), head="lm", mesh=mesh)
    models.save_pretrained(policy.merged(), tmp_path / "export")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    assert hf.config.vocab_size == MODEL.vocab_size
    trained = np.asarray(jax.device_get(result["state"].policy["trunk"]["embed"].get_value()))
    np.testing.assert_allclose(hf.get_input_embeddings().weight.detach().numpy(), trained)


def test_rl_resume_after_an_interruption_is_exact(user_files, tmp_path):
    config = build(PPORunConfig, _users_config(user_files, tmp_path / "full").to_dict())
    full = run_ppo(config)
    cut = dataclasses.replace(config, run_dir=str(tmp_path / "cut"))
    first = run_ppo(cut, stop_after=1)
    assert first["status"] == "interrupted"
    second = run_ppo(cut)
    assert second["iteration"] == 3 and len(second["history"]) == 3
    for a, b in zip(
        jax.tree.leaves(full["state"].policy), jax.tree.leaves(second["state"].policy), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_grpo_on_a_users_checkpoint_with_reward_functions_only(user_files, tmp_path):
    result = run_ppo_from_config(_users_config(user_files, tmp_path / "grpo", "grpo_smoke"))
    assert result["status"] == "finished" and result["state"].critic is None
    assert result["statics"].reward is None
    row = result["history"][-1]
    assert row["kl_coef"] == 0.0 and "rewards/exact_match/mean" in row
    assert "rewards/length_penalty/mean" in row


def test_the_train_ppo_script_runs_grpo_smoke(tmp_path):
    import subprocess
    import sys

    args = [
        sys.executable,
        str(ROOT / "experiments" / "train_ppo.py"),
        "--config",
        f"{ROOT}/configs/ppo.py:grpo_smoke",
        f"--config.run_dir={tmp_path}",
        "--config.iterations=2",
        "--config.mesh.num_devices=1",
        "--config.console=False",
        "--config.tensorboard=False",
    ]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "[ppo] finished 2 iterations" in proc.stdout
    assert (tmp_path / "artifact" / "artifact.json").is_file()


def test_ppo_with_lora_references_the_base_and_exports_merged_and_peft(user_files, tmp_path):
    """PPO on a user's HF checkpoint with LoRA on policy and critic: the reference is the base
    (adapters off, no copy), only adapters and the value head train, a resumed run equals the
    uninterrupted one, and the artifact exports merged (transformers) and as a peft adapter."""
    import torch
    from peft import PeftModel

    from rlhf_jax.cli import tools

    c = _users_config(user_files, tmp_path / "full")
    c.policy.lora = {"rank": 4, "alpha": 8.0, "targets": ("q", "v", "o", "up")}
    config = build(PPORunConfig, c.to_dict())
    assert config.policy.lora.rank == 4 and config.ppo.uses_critic
    full = run_ppo(config)
    state = full["state"]
    assert state.frozen["reference"] is None
    kinds = lambda tree: {type(v).__name__ for _, v in nnx.to_flat_state(tree)}
    assert kinds(state.policy) == {"LoraParam"}
    assert kinds(state.critic["trunk"]) == {"LoraParam"} and kinds(state.critic["head"]) == {
        "Param"
    }
    assert any(float(np.abs(np.asarray(x)).max()) > 0 for x in jax.tree.leaves(state.policy))
    assert full["history"][0]["objective/kl"] == pytest.approx(0.0, abs=1e-6)  # π = π_ref first
    cut = dataclasses.replace(config, run_dir=str(tmp_path / "cut"))
    assert run_ppo(cut, stop_after=1)["status"] == "interrupted"
    second = run_ppo(cut)
    for a, b in zip(
        jax.tree.leaves(full["state"].policy), jax.tree.leaves(second["state"].policy), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    artifact = str(tmp_path / "full" / "artifact")
    tools.export([artifact, str(tmp_path / "merged"), "--peft", str(tmp_path / "adapter")])
    tokens = np.array([[5, 9, 11, 14, 20, 7]], np.int64)
    with torch.no_grad():
        merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
        base = transformers.AutoModelForCausalLM.from_pretrained(user_files / "policy")
        peft = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
        want, got = merged(torch.from_numpy(tokens)).logits, peft(torch.from_numpy(tokens)).logits
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-4)
