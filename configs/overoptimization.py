"""Reward-model over-optimisation on the synthetic task (Gao et al. 2022), one command.

    python experiments/overoptimization.py --config configs/overoptimization.py
    python experiments/overoptimization.py --config configs/overoptimization.py:smoke  # tests

Proxy reward models at each of ``data_sizes`` × ``widths``, trained on gold-labelled SFT pairs;
for each, best-of-n (n = 1 … 2^bon_log2) and PPO arms at each of ``kl_coefs``; Gao et al.'s
forms fitted to each curve; report.md / report.json / PNGs in run_dir. Every field is documented
in `rlhf_jax/synthetic/overoptimization.py` (`StudyConfig`); the pipeline section is the
synthetic pipeline's config (`configs/synthetic.py`), whose pretrain and SFT the study shares
(run `make demo` first, or the study trains them). Resumes when rerun; split over processes
with `--config.workers=2 --config.worker=0` (and worker=1), e.g. one per GPU.
"""

import dataclasses
import importlib.util
import pathlib

from rlhf_jax.synthetic import PPOStage
from rlhf_jax.synthetic.overoptimization import StudyConfig
from rlhf_jax.training.config import build, config_dict


def _pipeline(arg):
    path = pathlib.Path(__file__).resolve().parent / "synthetic.py"
    spec = importlib.util.spec_from_file_location("synthetic_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from rlhf_jax.synthetic import PipelineConfig

    return build(PipelineConfig, module.get_config(arg).to_dict())


def get_config(arg=None):
    smoke = arg == "smoke"
    if arg not in (None, "", "smoke"):
        raise ValueError(f"unknown variant {arg!r}; expected none or 'smoke'")
    pipeline = _pipeline("smoke" if smoke else None)
    # The policy's pretrain and SFT are the default pipeline's (its run directory).
    pipeline = dataclasses.replace(pipeline, base_run_dir=pipeline.run_dir)
    config = StudyConfig(
        run_dir="runs/overoptimization_smoke" if smoke else "runs/overoptimization",
        pipeline=pipeline,
        data_sizes=(40, 100) if smoke else (250, 1000, 4000, 16000),
        preference_prompts=400 if smoke else None,
        widths=(32, 64) if smoke else (64, 128),
        reward_epochs=2.0 if smoke else 4.0,
        reward_min_steps=5 if smoke else 150,
        bon_prompts=16 if smoke else 256,
        bon_log2=3 if smoke else 6,
        kl_coefs=(0.0, 0.1),
        rl=PPOStage(
            iterations=4 if smoke else 200,
            prompts_per_iteration=16 if smoke else 64,
            prompts=256 if smoke else 8192,
        ),
        rl_learning_rate=3e-4 if smoke else 1e-4,
        rl_bin=2 if smoke else 5,
    )
    return config_dict(config)
