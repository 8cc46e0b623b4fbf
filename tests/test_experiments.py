"""Config files and the experiment entry point: every variant builds, the smoke one runs."""

import importlib.util
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from rlhf_jax import presets
from rlhf_jax.training.config import build
from rlhf_jax.training.entry import PHASES, run_from_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(phase, arg):
    spec = importlib.util.spec_from_file_location(
        f"config_{phase}", ROOT / "configs" / f"{phase}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.mark.parametrize("phase", ["sft", "reward", "dpo"])
@pytest.mark.parametrize("variant", presets.VARIANTS)
def test_every_config_variant_builds_a_typed_config(phase, variant):
    config = build(PHASES[phase].config_type, load_config(phase, variant).to_dict())
    assert isinstance(config, PHASES[phase].config_type)
    assert config.model.origin == ("init" if variant == "smoke" else "hf")
    # Each phase's config has its own section and no other phase's.
    assert hasattr(config, "dpo") == (phase == "dpo")
    assert hasattr(config, "reward") == (phase == "reward")


def test_the_smoke_preset_needs_no_repository_files():
    config = build(PHASES["sft"].config_type, load_config("sft", "smoke").to_dict())
    package = pathlib.Path(presets.__file__).parent
    for path in (config.data.path, config.model.tokenizer):
        assert pathlib.Path(path).is_relative_to(package), path
        assert pathlib.Path(path).exists(), path


def test_a_new_dataclass_field_reaches_the_command_line_without_a_config_edit():
    # Config sections are made from the dataclasses, so every field (with its default) is
    # there to override, and an optional one parses as its type.
    c = load_config("dpo", "smoke")
    assert c.dpo.simpo_gamma == 0.5 and c.optimizer.max_grad_norm == 1.0
    c.data.max_responses = 4
    c.dpo.loss_type = "ipo"
    config = build(PHASES["dpo"].config_type, c.to_dict())
    assert config.data.max_responses == 4 and config.dpo.loss_type == "ipo"


def test_unknown_field_is_named():
    config = load_config("sft", "smoke").to_dict()
    config["optimizer"]["learnig_rate"] = 1.0
    with pytest.raises(ValueError, match=r"config\.optimizer\.learnig_rate"):
        build(PHASES["sft"].config_type, config)
    with pytest.raises(ValueError, match="variant"):
        load_config("sft", "gpt5")


def test_smoke_sft_then_reward_from_its_artifact(tmp_path):
    sft = load_config("sft", "smoke")
    sft.run_dir = str(tmp_path / "sft")
    sft.total_steps = 8
    sft.console = sft.tensorboard = False
    run_from_config(sft, kind="sft")
    rm = load_config("reward", "smoke")
    rm.run_dir = str(tmp_path / "rm")
    rm.model.artifact = str(tmp_path / "sft" / "artifact")
    rm.total_steps = 8
    rm.console = False
    result = run_from_config(rm, kind="reward")
    assert result["status"] == "finished"
    assert (tmp_path / "rm" / "logs" / "tensorboard").is_dir()
    assert (tmp_path / "rm" / "logs" / "metrics.jsonl").read_text().count("\n") >= 1


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    """A preempted run (SIGTERM) checkpoints, exits 0, and the same command resumes."""
    script = ROOT / "experiments" / "train_sft.py"
    args = [
        sys.executable,
        str(script),
        "--config",
        f"{ROOT}/configs/sft.py:smoke",
        f"--config.run_dir={tmp_path}",
        "--config.total_steps=100000",
        "--config.console=False",
        "--config.log_every=1",
        "--config.tensorboard=False",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "logs" / "metrics.jsonl"
    for line in proc.stdout:
        if "[sft] data " in line:
            break
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or metrics.read_text().count("\n") < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "interrupted at step" in out
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps and steps[-1] >= 3
    assert not (tmp_path / "artifact").exists()


def test_load_get_config_reads_a_config_file_and_names_bad_ones(tmp_path):
    from rlhf_jax.training.config import load_get_config

    get = load_get_config(ROOT / "configs" / "synthetic.py")
    assert get("smoke").console is True
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_get_config(tmp_path / "nowhere.py")
    (tmp_path / "empty.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match=r"empty\.py: defines no get_config"):
        load_get_config(tmp_path / "empty.py")
