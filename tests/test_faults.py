"""Fault injection: every phase killed, signalled, corrupted, raced and fed bad input, each case
ending either in a run bit-identical to an uninterrupted one or in a message naming what and
where — never a silent difference, never lost work.

    make test-faults     # every case (slow: the scripts run as subprocesses)

The cases without a subprocess also run in the default suite.
"""

import dataclasses
import json
import os
import pathlib
import signal

import jax
import numpy as np
import pytest
from fault_testing import SIGNALS, command, history, hurt, run, same_params
from test_training_phases import (
    MODEL,
    _config,
    workdir,  # noqa: F401 (a fixture)
)

from rlhf_jax import checkpoint as ckpt_lib
from rlhf_jax.training import reward, sft
from rlhf_jax.training.loop import NonFiniteError, Run, RunLock, RunLockedError
from rlhf_jax.training.optimizer import OptimizerConfig
from rlhf_jax.training.phase import run_phase

pytestmark = pytest.mark.faults
PHASES = ["sft", "reward", "dpo", "ppo"]


# ---------------------------------------------------------------------------------------------
# Scripts as subprocesses (slow)


@pytest.fixture(scope="module")
def smoke_chain(tmp_path_factory):
    """Uninterrupted runs of every phase's script, chained as a user chains them (the reward
    model, DPO and PPO from the SFT artifact): the references the hurt runs must equal."""
    root = tmp_path_factory.mktemp("faults")
    refs = {}
    for phase in PHASES:
        out = run(command(phase, root / phase, *_inputs(root, phase)))
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        refs[phase] = root / phase
    return root


def _inputs(root, phase):
    if phase in ("reward", "dpo"):
        return [f"--config.model.artifact={root / 'sft' / 'artifact'}"]
    if phase == "ppo":
        return [
            f"--config.policy.artifact={root / 'sft' / 'artifact'}",
            f"--config.reward.artifact={root / 'reward' / 'artifact'}",
        ]
    return []


def _resumed_equals_reference(smoke_chain, tmp_path, phase, *, sig, **when):
    cmd = command(phase, tmp_path, *_inputs(smoke_chain, phase))
    code, out = hurt(cmd, tmp_path, sig=SIGNALS[sig], **when)
    if sig != "SIGKILL":
        assert code == 0, out[-3000:]  # a signal ends the run cleanly
    again = run(cmd)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert same_params(tmp_path, smoke_chain / phase), f"{phase} after {sig}: parameters differ"
    return out


@pytest.mark.slow
@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("sig, lines", [("SIGKILL", 6), ("SIGKILL", 13), ("SIGTERM", 9)])
def test_killed_or_signalled_mid_run_resumes_exactly(smoke_chain, tmp_path, phase, sig, lines):
    lines = min(lines, 7) if phase == "ppo" else lines  # PPO runs 10 iterations
    _resumed_equals_reference(smoke_chain, tmp_path, phase, sig=sig, after_lines=lines)
    if phase == "ppo":  # the history is the whole run's, once each (as the reference's)
        rows = history(tmp_path)
        assert [r["iteration"] for r in rows] == list(range(1, 11))
        ref = history(smoke_chain / "ppo")
        assert [r["objective/scores"] for r in rows] == [r["objective/scores"] for r in ref]


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["sft", "ppo"])
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_during_start_up_exits_cleanly_and_resumes(smoke_chain, tmp_path, phase, sig):
    # 4 s in: imports done, the first programs compiling (a SIGINT there once crashed XLA).
    out = _resumed_equals_reference(smoke_chain, tmp_path, phase, sig=sig, after_seconds=4.0)
    assert "Traceback" not in out, out[-3000:]


@pytest.mark.slow
def test_a_second_run_on_the_same_directory_is_refused(tmp_path):
    import subprocess

    from fault_testing import env, metric_lines

    long = command("sft", tmp_path, "--config.total_steps=100000")
    first = subprocess.Popen(
        long, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env()
    )
    while metric_lines(tmp_path) < 2 and first.poll() is None:  # training, lock held
        pass
    second = run(long)
    assert second.returncode != 0, second.stdout[-2000:]
    assert f"is in use by process {first.pid}" in second.stdout + second.stderr
    assert first.poll() is None  # the first run is untouched, still training
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=600) == 0
    assert not (tmp_path / ".lock.0").exists()


# ---------------------------------------------------------------------------------------------
# In process (fast; also in the default suite)


def _sft(workdir, name, steps=6, **overrides):  # noqa: F811
    return _config(workdir, name, "sft", steps=steps, **overrides)


def _flip_byte(path: pathlib.Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[min(offset, len(data) - 1)] ^= 0xFF
    path.write_bytes(bytes(data))


def _largest_file(folder: pathlib.Path) -> pathlib.Path:
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _full(workdir, tmp_path):  # noqa: F811
    config = dataclasses.replace(_sft(workdir, "full"), run_dir=str(tmp_path / "full"))
    return run_phase(sft.PHASE, config)


@pytest.mark.parametrize("damage", ["array", "data_position", "metadata"])
def test_a_damaged_latest_checkpoint_is_set_aside_and_the_one_before_used(
    workdir,  # noqa: F811
    tmp_path,
    damage,
    capsys,
):
    full = _full(workdir, tmp_path)
    config = dataclasses.replace(_sft(workdir, f"faults_{damage}"), run_dir=str(tmp_path / damage))
    assert run_phase(sft.PHASE, config, stop_after=4)["status"] == "interrupted"
    latest = tmp_path / damage / "checkpoints" / "4"
    if damage == "array":
        _flip_byte(_largest_file(latest / "state"), 1000)
    elif damage == "data_position":
        position = latest / "data" / "metadata"  # the data iterator's position, JSON
        saved = json.loads(position.read_text())
        key = next(k for k, v in saved.items() if isinstance(v, int) and not isinstance(v, bool))
        saved[key] += 1  # a plausible, wrong value
        position.write_text(json.dumps(saved))
    else:
        (latest / "_CHECKPOINT_METADATA").write_text("{not json")
    second = run_phase(sft.PHASE, config)
    assert second["status"] == "finished"
    printed = capsys.readouterr().out
    assert f"checkpoint {latest} is damaged" in printed and "resumed from step 2" in printed
    assert (tmp_path / damage / "checkpoints" / "damaged" / "4").is_dir()
    for a, b in zip(
        jax.tree.leaves(full["state"].params), jax.tree.leaves(second["state"].params), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_no_intact_checkpoint_is_an_error_naming_each(workdir, tmp_path):  # noqa: F811
    config = dataclasses.replace(_sft(workdir, "none_intact"), run_dir=str(tmp_path))
    run_phase(sft.PHASE, config, stop_after=4)
    for step in (2, 4):
        _flip_byte(_largest_file(tmp_path / "checkpoints" / str(step) / "state"), 500)
    with pytest.raises(
        ckpt_lib.CheckpointError, match=r"(?s)no intact checkpoint.*checksum differs"
    ):
        run_phase(sft.PHASE, config)


def test_a_damaged_artifact_is_an_error_naming_the_file(workdir, tmp_path):  # noqa: F811
    config = dataclasses.replace(_sft(workdir, "artifact"), run_dir=str(tmp_path / "sft"))
    run_phase(sft.PHASE, config)
    damaged = _largest_file(tmp_path / "sft" / "artifact" / "params")
    _flip_byte(damaged, 200)
    source = dataclasses.replace(config.model, artifact=str(tmp_path / "sft" / "artifact"))
    nxt = _config(workdir, "next", "reward", steps=2, data="prefs.jsonl", model=source)
    with pytest.raises(ckpt_lib.CheckpointError, match=rf"{damaged.name}: checksum differs"):
        run_phase(reward.PHASE, nxt)


def test_a_non_finite_update_from_finite_gradients_is_refused(workdir, tmp_path):  # noqa: F811
    # Adam with ε = 0: a parameter whose gradient is 0 gets 0/0 = NaN (the 2-layer model's
    # unused positions embed nothing; here the whole loss is scaled to 0 at one step).
    opt = OptimizerConfig(learning_rate=1e-3, schedule="constant", eps=0.0)
    config = dataclasses.replace(_sft(workdir, "eps0"), optimizer=opt, run_dir=str(tmp_path / "a"))
    with pytest.raises(NonFiniteError, match="in step 1;"):
        run_phase(sft.PHASE, config)
    skip = dataclasses.replace(config, run_dir=str(tmp_path / "b"), skip_nonfinite=True)
    result = run_phase(sft.PHASE, skip)
    assert int(result["state"].nonfinite_count) > 0
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(result["state"].params))


def _reordered(path: pathlib.Path) -> None:
    """The same rows in another order: the same row count, other data."""
    rows = path.read_text().splitlines()
    path.write_text("\n".join(reversed(rows)) + "\n")


@pytest.mark.parametrize("field", ["optimizer.learning_rate", "data.sha256"])
def test_resuming_with_changed_settings_names_them(workdir, tmp_path, field):  # noqa: F811
    data = tmp_path / "sft.jsonl"
    data.write_text((workdir / "sft.jsonl").read_text())
    config = _sft(workdir, "changed")
    config = dataclasses.replace(
        config, run_dir=str(tmp_path / "run"), data=dataclasses.replace(config.data, path=str(data))
    )
    run_phase(sft.PHASE, config, stop_after=2)
    if field == "data.sha256":
        _reordered(data)
        changed = config
    else:
        changed = dataclasses.replace(
            config, optimizer=dataclasses.replace(config.optimizer, learning_rate=1e-2)
        )
    with pytest.raises(ckpt_lib.CheckpointError, match=field.replace(".", r"\.")):
        run_phase(sft.PHASE, changed)
    allowed = dataclasses.replace(
        changed, checkpoint=dataclasses.replace(changed.checkpoint, allow_changed_config=True)
    )
    assert run_phase(sft.PHASE, allowed)["status"] == "finished"


def test_one_run_per_directory(tmp_path):
    lock = RunLock(tmp_path)
    with pytest.raises(RunLockedError, match=rf"in use by process {os.getpid()}"):
        RunLock(tmp_path)
    lock.release()
    # A lock left by a process that is gone is stale: taken over, and said so.
    gone = {"host": os.uname().nodename, "pid": 2**22 + 7, "started": 0.0}
    (tmp_path / ".lock.0").write_text(json.dumps(gone))
    printed = []
    RunLock(tmp_path, report=printed.append).release()
    assert printed and "stale lock" in printed[0]
    kwargs = dict(description="x", total_steps=1, fingerprint={}, console=False,
                  checkpoint=ckpt_lib.CheckpointConfig(), tensorboard=False)  # fmt: skip
    with Run(tmp_path / "r", **kwargs):
        with pytest.raises(RunLockedError):
            Run(tmp_path / "r", **kwargs)
    assert not (tmp_path / "r" / ".lock.0").exists()  # released on close


def test_a_signal_before_the_first_step_stops_without_loss(workdir, tmp_path):  # noqa: F811
    from rlhf_jax import interrupts

    config = dataclasses.replace(_sft(workdir, "early"), run_dir=str(tmp_path))
    with interrupts.interrupt_flag() as flag:
        flag["signal"] = "SIGTERM"  # as if it had come during start-up
        result = run_phase(sft.PHASE, config)
    assert result["status"] == "interrupted" and result["step"] == 0
    assert not (tmp_path / "artifact").exists()
    assert run_phase(sft.PHASE, config)["status"] == "finished"


del MODEL
