"""The package as users install it: a wheel (not an editable install) carries everything the
smoke preset needs, and its command runs a phase from another directory."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(args, **kwargs):
    proc = subprocess.run(args, capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_an_installed_wheel_runs_the_smoke_sft_preset_from_another_directory(tmp_path):
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", ROOT])
    (wheel,) = (tmp_path / "dist").glob("rlhf_jax-*.whl")
    site = tmp_path / "site"
    _run([*pip, "install", "--no-deps", "--target", site, wheel])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The wheel's package comes first on the path, ahead of the development checkout.
    env = dict(os.environ, PYTHONPATH=str(site))
    where = _run(
        [sys.executable, "-c", "import rlhf_jax; print(rlhf_jax.__file__)"], cwd=elsewhere, env=env
    )
    assert pathlib.Path(where.strip()).is_relative_to(site), where
    # The installed command with a packaged preset: no file of the repository is needed.
    out = _run(
        [
            site / "bin" / "rlhf-jax",  # the console script pip installed
            "train",
            "sft",
            "--preset",
            "smoke",
            "--config.run_dir=run",
            "--config.total_steps=2",
            "--config.console=False",
            "--config.tensorboard=False",
        ],
        cwd=elsewhere,
        env=env,
    )
    assert "[sft] finished 2 steps" in out, out
    assert (elsewhere / "run" / "artifact" / "artifact.json").is_file()
