"""The user's path: the README's walkthrough (a downloaded checkpoint → SFT → reward model →
PPO and DPO → evaluate → export, generate, score, report) run as written on a tiny Qwen2-style
checkpoint with a byte-level BPE tokenizer, and each trap a first trial of it hit."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import pathlib
import re
import shlex

import jax
import numpy as np
import pytest
import transformers
from data_testing import write_jsonl
from flax import nnx
from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
from tokenizers import models as tok_models
from training_testing import TINY

from rlhf_jax import cli, models, placement, sharding
from rlhf_jax.checkpoint import CheckpointConfig
from rlhf_jax.cli.train import _parse
from rlhf_jax.data import formats
from rlhf_jax.data import report as R
from rlhf_jax.presets import phase_config
from rlhf_jax.presets.overrides import resolve
from rlhf_jax.presets.rl import rl_config
from rlhf_jax.training.config import build
from rlhf_jax.training.optimizer import OptimizerConfig, warmup_steps
from rlhf_jax.training.phase import PhaseConfig
from rlhf_jax.training.ppo import PPORunConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORDS = (
    "user assistant hello world how are you fine thanks good bad the a is what two plus "
    "equals four five one three yes no maybe sure ok six seven eight basil water sun"
).split()
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QUESTIONS = ["what is two plus two", "how are you", "is the sun good", "how is basil"]
ANSWERS = ["four", "fine thanks", "yes", "good with water"]


def _bpe_tokenizer():
    """A byte-level BPE tokenizer with a ChatML template, as Qwen2's (but 400 tokens)."""
    tok = Tokenizer(tok_models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [" ".join(WORDS[i : i + 6]) for i in range(len(WORDS))] * 20
    specials = ["<pad>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )  # fmt: skip
    fast.chat_template = CHATML
    return fast


def _chat(q, a=None):
    messages = [{"role": "user", "content": q}]
    return messages if a is None else [*messages, {"role": "assistant", "content": a}]


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """What a user brings: an HF checkpoint where the README's MODEL points, and data/."""
    root = tmp_path_factory.mktemp("user")
    tokenizer = _bpe_tokenizer()
    config = dataclasses.replace(
        TINY, model_type="qwen2", qkv_bias=True, vocab_size=512,
        eos_token_ids=(tokenizer.convert_tokens_to_ids("<|im_end|>"),),
    )  # fmt: skip
    model_dir = root / "checkpoints" / "qwen2.5-0.5b-instruct"
    models.save_pretrained(
        models.CausalLM(config, rngs=nnx.Rngs(0)), model_dir, tokenizer=tokenizer
    )
    data = root / "data"
    data.mkdir()
    pairs = list(zip(QUESTIONS * 6, ANSWERS * 6, strict=True))
    write_jsonl(data / "sft.jsonl", [{"messages": _chat(q, a)} for q, a in pairs])
    # The raw Anthropic HH strings, as the dataset holds them (one row with two turns).
    turn = "\n\nHuman: {}\n\nAssistant: {}".format
    hh = [{"chosen": turn(q, a), "rejected": turn(q, "no")} for q, a in pairs]
    hh[0] = {k: "\n\nHuman: hello\n\nAssistant: hello world" + v for k, v in hh[0].items()}
    write_jsonl(data / "hh.jsonl", hh)
    write_jsonl(data / "prefs.jsonl", [
        {"prompt": q, "chosen": _chat(q, a)[1:], "rejected": _chat(q, "bad")[1:]} for q, a in pairs
    ])  # fmt: skip
    write_jsonl(data / "prompts.jsonl", [{"prompt": _chat(q), "completion": a} for q, a in pairs])
    return root


def walkthrough() -> list[list[str]]:
    """The README's walkthrough commands (continuation lines joined, $VARIABLES expanded),
    each without its leading ``rlhf-jax``."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- walkthrough -->\n```bash\n(.*?)```\n<!-- /walkthrough -->", text, re.S)
    assert block, "README.md has no walkthrough block"
    env, commands = {}, []
    for line in block.group(1).replace("\\\n", " ").splitlines():
        if match := re.fullmatch(r"(\w+)=(\S+)", line.strip()):
            env[match.group(1)] = match.group(2)
        elif line.strip():
            words = shlex.split(re.sub(r"\$(\w+)", lambda m: env[m.group(1)], line))
            assert words[0] == "rlhf-jax", line
            commands.append(words[1:])
    return commands


QUIET = ["--config.console=False", "--config.tensorboard=False", "--config.mesh.num_devices=1"]
OFFLINE = ["--config.total_steps=2", "--config.data.bucket_lengths=(48,)",
           "--config.data.batch_size=8", "--config.model.dtype=float32", *QUIET]  # fmt: skip
# The walkthrough's commands at the tiny model's size: a few steps, float32, one device.
SHRINK = {
    ("train", "sft"): OFFLINE,
    ("train", "reward"): OFFLINE,
    ("train", "dpo"): OFFLINE,
    ("train", "ppo"): [
        "--config.iterations=2", "--config.prompts_per_iteration=4", "--config.prompt_length=32",
        "--config.ppo.response_length=4", "--config.ppo.ppo_epochs=1",
        "--config.ppo.num_minibatches=1", "--config.ppo.grad_accum_steps=1",
        "--config.ppo.reward_norm_prompts=4", "--config.policy.dtype=float32",
        "--config.reward.dtype=float32", *QUIET,
    ],
    ("evaluate",): [
        "--config.num_prompts=4", "--config.samples_per_prompt=2", "--config.response_length=4",
        "--config.prompt_length=32", "--config.prompt_split=train", "--config.batch_size=8",
        "--config.reward.dtype=float32", "--config.mesh.num_devices=1",
        *[f"--config.policies.{p}.dtype=float32" for p in ("sft", "ppo", "dpo")],
    ],
    ("generate",): ["--max-new-tokens", "4"],
    ("score",): ["--max-length", "48"],
}  # fmt: skip


def run_cli(args: list[str], cwd) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    before = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = cli.main(args)
    finally:
        os.chdir(before)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def walk(user):
    results = {}
    for command in walkthrough():
        key = tuple(command[:2]) if command[0] == "train" else (command[0],)
        status, out, err = run_cli([*command, *SHRINK.get(key, [])], user)
        assert status == 0, f"{shlex.join(command)}\n{out}\n{err}"
        results[" ".join(key)] = out + err
    return results


def _meta(path) -> dict:
    return json.loads((pathlib.Path(path) / "artifact.json").read_text())


def test_the_readme_walkthrough_runs_as_written(walk):
    assert list(walk) == ["train sft", "train reward", "train ppo", "train dpo", "evaluate",
                          "export", "generate", "score", "report"]  # fmt: skip
    # The preset's real checkpoint path gives way to the artifact (finding 2), and its
    # tokenizer to the one the artifact carries (findings 1, 3).
    assert "model.artifact given: the preset's model.hf_path" in walk["train reward"]
    assert "[reward] data " in walk["train reward"] and "data: data" not in walk["train reward"]
    assert "[evaluate] win rate ppo" in walk["evaluate"]
    assert "chosen > rejected on" in walk["score"]


def test_artifacts_remember_tokenizer_base_data_and_config(user, walk):
    model_dir = (user / "checkpoints" / "qwen2.5-0.5b-instruct").resolve()
    sft, reward, ppo = (
        _meta(user / "runs" / "my" / p / "artifact") for p in ("sft", "reward", "ppo")
    )
    for meta in (sft, reward, ppo):
        assert meta["base_checkpoint"] == str(model_dir)  # carried down the chain
        assert meta["tokenizer"] == "tokenizer" and meta["code"]["rlhf_jax"]
    data = user / "data" / "sft.jsonl"
    assert sft["data"] == [
        {"path": str(data.resolve()), "sha256": hashlib.sha256(data.read_bytes()).hexdigest()}
    ]
    assert sft["config"]["data"]["path"] == "data/sft.jsonl"
    assert reward["sources"]["model"]["origin"] == "artifact"
    assert ppo["sources"]["reward"]["path"].endswith("runs/my/reward/artifact")
    carried = models.load_tokenizer(user / "runs" / "my" / "sft" / "artifact" / "tokenizer")
    assert (
        carried("how is basil")["input_ids"]
        == models.load_tokenizer(model_dir)("how is basil")["input_ids"]
    )


def test_the_export_loads_in_transformers_with_equal_logits(user, walk):
    exported = user / "exported" / "ppo"
    hf = transformers.AutoModelForCausalLM.from_pretrained(exported)
    tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    ids = np.asarray([tokenizer("what is two plus two")["input_ids"]])
    mesh = sharding.make_mesh(sharding.MeshConfig(num_devices=1))
    ours = placement.place_model(
        str(user / "runs" / "my" / "ppo" / "artifact"), head="lm", mesh=mesh
    )
    positions, mask = np.arange(ids.shape[1])[None], np.ones(ids.shape, bool)
    logits = np.asarray(
        jax.device_get(ours.merged()(ids, positions_BxT=positions, attn_mask_BxT=mask))
    )
    import torch

    with torch.no_grad():
        expected = hf(torch.as_tensor(ids)).logits.numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=1e-5)


def test_the_report_has_every_phases_curves_and_provenance(user, walk):
    report = user / "runs" / "my" / "report"
    text = (report / "report.md").read_text()
    for name in ("sft", "reward", "ppo", "dpo"):
        assert f"## {name} (" in text and (report / f"{name}_curves.png").is_file()
    assert "base checkpoint" in text and "carried in the artifact" in text
    assert (report / "ppo" / "report.md").is_file()  # reward vs KL, length, monitors


def test_resume_refuses_other_data_or_settings_naming_them(user, walk):
    # The walkthrough's finished SFT run, rerun with a file of the same rows in another
    # order (the same count) and another learning rate: refused, the fields named (finding 4).
    rows = (user / "data" / "sft.jsonl").read_text().splitlines()
    (user / "data" / "sft_other.jsonl").write_text("\n".join(reversed(rows)) + "\n")
    (command,) = [c for c in walkthrough() if c[:2] == ["train", "sft"]]
    changed = [*command, *OFFLINE, "--config.data.path=data/sft_other.jsonl",
               "--config.optimizer.learning_rate=0.5"]  # fmt: skip
    status, _, err = run_cli(changed, user)
    assert status == 2 and "Traceback" not in err
    assert "data.sha256" in err and "optimizer.learning_rate" in err and "data.path" in err
    assert "allow_changed_config" in err


def _error(args, cwd) -> str:
    status, _, err = run_cli(args, cwd)
    assert status == 2, err
    assert "Traceback" not in err and err.startswith("error: "), err
    return err


def test_user_errors_are_one_message_each(user, walk, tmp_path):
    """Finding 6: each user error is one message and exit status 2, never a traceback."""
    assert "a config is required" in _error(["train", "sft"], tmp_path)
    missing = _error(
        ["train", "sft", "--preset", "qwen05b_hh", "--config.model.hf_path=nope"], tmp_path
    )
    assert "checkpoint directory not found: nope" in missing
    typo = _error(
        ["train", "sft", "--preset", "smoke", "--config.optimizer.learnig_rate=1"], tmp_path
    )
    assert "learnig_rate" in typo and "learning_rate" in typo
    # A reward artifact given to DPO: the artifact's kind is named, not Orbax's restore hint.
    wrong = _error(["train", "dpo", "--preset", "smoke", *OFFLINE,
                    f"--config.model.artifact={user}/runs/my/reward/artifact",
                    f"--config.data.path={user}/data/prefs.jsonl"], tmp_path)  # fmt: skip
    assert "holds a reward model" in wrong and "partial_restore" not in wrong
    # Only bad rows, with a held-out fraction: the bad-row report, not "cannot be split".
    write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "hi", "chosen": "", "rejected": "x"}] * 3)
    bad = _error(
        ["train", "reward", "--preset", "smoke", f"--config.data.path={tmp_path}/bad.jsonl"],
        tmp_path,
    )
    assert "no usable examples" in bad and "empty_response: 3" in bad
    with pytest.raises(FileNotFoundError):  # --debug: the exception itself
        run_cli(["--debug", "generate", str(tmp_path / "none"), "--prompt", "hi"], tmp_path)


def test_a_tokenizer_that_does_not_fit_the_model_is_refused_before_any_step(user, tmp_path):
    # Finding 1: the smoke preset's word-level tokenizer on a user's data: mostly <unk>.
    write_jsonl(
        tmp_path / "sft.jsonl", [{"prompt": "Why is the sky blue?", "completion": "Light."}] * 4
    )
    unk = _error(["train", "sft", "--preset", "smoke", f"--config.data.path={tmp_path}/sft.jsonl"],
                 tmp_path)  # fmt: skip
    assert "<unk>" in unk and "model.tokenizer" in unk
    # A tokenizer larger than the model's vocabulary (the 512-token tiny model's, on smoke).
    big = _error(
        ["train", "sft", "--preset", "smoke", "--config.model.init.vocab_size=16"], tmp_path
    )
    assert "18 tokens but the model's vocabulary holds 16" in big


def test_a_model_source_given_replaces_the_presets():
    # Finding 2: an artifact replaces a preset's hf_path (and its tokenizer), and vice versa.
    config, notes = resolve(
        phase_config("dpo", "gpt2").to_dict(), {"model.artifact": "a"}, kind="dpo"
    )
    assert config["model"]["artifact"] == "a" and config["model"]["hf_path"] is None
    assert any("model.hf_path" in n for n in notes)
    smoke = phase_config("sft", "smoke").to_dict()
    config, _ = resolve(smoke, {"model.hf_path": "m"}, kind="sft")
    assert config["model"]["tokenizer"] is None  # the checkpoint's own, not the smoke one
    config, _ = resolve(smoke, {"model.hf_path": "m", "model.tokenizer": "t"}, kind="sft")
    assert config["model"]["tokenizer"] == "t"
    rl = rl_config("pythia1b_tldr").to_dict()
    config, _ = resolve(rl, {"policy.hf_path": "p", "reward.tokenizer": None}, kind="ppo")
    assert config["policy"]["artifact"] is None and config["reward"]["tokenizer"] is None


def test_derived_settings_follow_the_run_length_unless_set():
    # Finding 5: the presets leave warm-up and checkpoint cadence None, which follows the
    # length wherever it is set; a value given (here or in a config file) stays.
    c = phase_config("sft", "smoke")
    c.total_steps = 100
    config = build(PhaseConfig, c.to_dict())
    assert warmup_steps(config.optimizer, config.total_steps) == 5
    assert config.checkpoint.every(config.total_steps, saves_per_run=4) == 25
    assert warmup_steps(OptimizerConfig(warmup_steps=0), 100) == 0
    assert CheckpointConfig(save_every=7).every(100, saves_per_run=4) == 7
    rl = build(PPORunConfig, rl_config("smoke").to_dict())
    assert rl.checkpoint.save_every is None  # the RL run: every 5%, at least 2 (runner)


def test_an_experiment_gets_its_own_directory_and_finds_it_again():
    # Finding 4: one directory per configuration, named by a hash of the overrides alone (so
    # a preset's or a default's later change does not move a run away from its checkpoints).
    smoke = phase_config("sft", "smoke").to_dict()
    run_dir = lambda over: resolve(smoke, over, kind="sft")[0]["run_dir"]
    assert run_dir({}) == run_dir({"console": False}) == "runs/smoke/sft"
    assert run_dir({"total_steps": 100}) == "runs/smoke/sft-6c67f07d"  # pinned
    assert run_dir({"total_steps": 200}) != run_dir({"total_steps": 100})
    # Keeping and showing a run differently resumes the same run.
    more = {"total_steps": 100, "checkpoint.allow_changed_config": True, "console": False,
            "checkpoint.save_every": 5}  # fmt: skip
    assert run_dir(more) == "runs/smoke/sft-6c67f07d"
    assert run_dir({"total_steps": 100, "run_dir": "mine"}) == "mine"


def test_command_line_edge_cases_are_one_message(tmp_path):
    assert "the sft presets are smoke, gpt2" in _error(
        ["train", "sft", "--preset", "gpt5"], tmp_path
    )
    missing = _error(["train", "sft", "--config", str(tmp_path / "nope.py")], tmp_path)
    assert "config file" in missing and "nope.py" in missing
    # --config.x=None unsets a non-string optional field too; a --preset after overrides works.
    config, overridden = _parse(
        "sft",
        ["--config.optimizer.max_grad_norm=None", "--config.total_steps=3", "--preset", "smoke"],
    )
    resolved, _ = resolve(config.to_dict(), overridden, kind="sft")
    built = build(PhaseConfig, resolved)
    assert built.optimizer.max_grad_norm is None and built.total_steps == 3


def test_config_show_lists_every_field_with_its_comment(tmp_path):
    status, out, _ = run_cli(["config", "show", "sft:smoke"], tmp_path)
    assert status == 0
    assert "learning_rate = 0.003  # peak learning rate" in out
    assert re.search(r"^  bucket_lengths = \(8, 12\)  # Static sequence lengths", out, re.M)
    status, out, _ = run_cli(["train", "ppo", "--help"], tmp_path)
    assert status == 0 and "kl_coef = " in out and "response_length = 6" in out


def test_raw_hh_strings_are_read_as_conversations():
    row = {
        "chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: Fine.",
        "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: No.",
    }
    record = formats.parse_preference(row)
    assert record.prompt == (
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "how are you?"},
    )
    assert record.responses == ("Fine.", "No.")
    with pytest.raises(R.RowError, match="differ before any 'Assistant:' turn they share"):
        formats.parse_preference({**row, "rejected": "\n\nHuman: other\n\nAssistant: No."})
    with pytest.raises(R.RowError, match="empty"):
        formats.parse_preference({**row, "chosen": row["chosen"].replace("Fine.", "")})
    # As TRL splits them: a response is everything after the shared prompt, turns and all.
    quoting = {**row, "chosen": row["chosen"] + "\n\nHuman: thanks"}
    assert formats.parse_preference(quoting).responses == ("Fine.\n\nHuman: thanks", "No.")
    with pytest.raises(R.RowError, match="must start with a 'Human:' turn"):
        formats.parse_preference({"chosen": "\n\nAssistant: a", "rejected": "\n\nAssistant: b"})
    with pytest.raises(R.RowError, match="'rejected' is not an HH transcript"):
        formats.parse_preference({**row, "rejected": "No."})


def test_a_checkpoint_from_before_the_run_length_was_recorded_still_resumes():
    from rlhf_jax.checkpoint import CheckpointError, check_fingerprint

    old = {"phase": "sft", "seed": 0}  # written before total_steps was in the fingerprint
    check_fingerprint(old, {**old, "total_steps": 60}, where="x")
    with pytest.raises(CheckpointError, match="total_steps: saved 60, now 90"):
        check_fingerprint({**old, "total_steps": 60}, {**old, "total_steps": 90}, where="x")
    with pytest.raises(CheckpointError, match="seed"):
        check_fingerprint(old, {**old, "seed": 1, "total_steps": 60}, where="x")
