"""The library entry points behind ``experiments/train_*.py``: ConfigDict in, phase run."""

from __future__ import annotations

import sys

import jax
from absl import logging as absl_logging

from rlhf_jax import sharding
from rlhf_jax.interrupts import interrupt_flag
from rlhf_jax.presets.overrides import resolve
from rlhf_jax.training import dpo, reward, sft
from rlhf_jax.training.config import build
from rlhf_jax.training.phase import Phase, run_phase
from rlhf_jax.training.ppo import PPORunConfig, run_ppo

PHASES: dict[str, Phase] = {p.name: p for p in (sft.PHASE, reward.PHASE, dpo.PHASE)}


def _resolved(config_dict, overrides, kind: str) -> dict:
    """The config as a dict, with the command line's overrides resolved (`presets.overrides`:
    a model source replaces the preset's, derived settings follow the run's length, an
    experiment gets its own run directory); each consequence printed."""
    if config_dict is None:
        raise ValueError(f"no config: pass --config configs/{kind}.py:VARIANT (e.g. :smoke)")
    config = config_dict.to_dict() if hasattr(config_dict, "to_dict") else dict(config_dict)
    if overrides is None:
        return config
    config, notes = resolve(config, overrides, kind=kind)
    if jax.process_index() == 0:
        for note in notes:
            print(f"[{kind}] {note}", flush=True)
    return config


def run_from_config(config_dict, *, kind: str, overrides=None) -> dict:
    """Initialises multi-host if configured, builds the phase's typed config, runs the phase.

    ``overrides`` are the fields the command line set (ml-collections'
    ``get_override_values``), resolved by `presets.overrides.resolve`; None takes the config
    as it is.

    SIGTERM/SIGINT, wherever in the run it arrives (start-up, a step, the final save), stops
    the run at the next safe point; it exits with status 0 once everything written is
    consistent, so a scheduler that preempted the job can simply start it again to resume.
    """
    if kind not in PHASES:
        raise ValueError(f"unknown phase {kind!r}; expected one of {sorted(PHASES)}")
    phase = PHASES[kind]
    # Orbax and JAX log every checkpoint step at INFO; the progress bar says what matters.
    absl_logging.set_verbosity(absl_logging.WARNING)
    sharding.initialize_distributed()
    config = build(phase.config_type, _resolved(config_dict, overrides, kind))
    with interrupt_flag():  # a signal anywhere in the run stops it at the next safe point
        result = run_phase(phase, config)
    if result["status"] == "interrupted":
        print(f"[{kind}] interrupted at step {result['step']}; rerun the same command to resume")
        sys.exit(0)
    summary = {k: round(v, 4) for k, v in result.get("eval", {}).items()}
    print(f"[{kind}] finished {result['step']} steps; held-out: {summary or 'none'}")
    print(f"[{kind}] artifact: {config.run_dir}/artifact")
    print(f"[{kind}] training curves: rlhf-jax report {config.run_dir}")
    return result


def run_ppo_from_config(config_dict, *, overrides=None) -> dict:
    """``experiments/train_ppo.py``: PPO, GRPO or RLOO from a ConfigDict (as `run_from_config`
    for the offline phases: multi-host, exit 0 after an interrupt that saved a checkpoint)."""
    absl_logging.set_verbosity(absl_logging.WARNING)
    sharding.initialize_distributed()
    config = build(PPORunConfig, _resolved(config_dict, overrides, "ppo"))
    with interrupt_flag():
        result = run_ppo(config)
    if result["status"] == "interrupted":
        step = result["iteration"]
        print(f"[ppo] interrupted at iteration {step}; rerun the same command to resume")
        sys.exit(0)
    last = result["history"][-1] if result["history"] else {}
    shown = {k: round(v, 4) for k, v in last.items() if k.startswith(("objective/", "rewards/"))}
    print(f"[ppo] finished {result['iteration']} iterations; last: {shown or 'none'}")
    print(f"[ppo] artifact: {config.run_dir}/artifact")
    print(f"[ppo] training curves: rlhf-jax report {config.run_dir}")
    return result
