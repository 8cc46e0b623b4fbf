"""``rlhf-jax train PHASE``, ``rlhf-jax evaluate`` and ``rlhf-jax config show``: the commands
driven by an ml-collections config (a preset, or a config file) and its overrides."""

from __future__ import annotations

import json
import pathlib
import sys

from rlhf_jax.cli import UsageError

PHASES = ("sft", "reward", "dpo", "ppo")
CONFIG_FILE = pathlib.Path(__file__).resolve().parents[1] / "presets" / "config_file.py"


def _config_args(kind: str, argv: list[str]) -> list[str]:
    """``--preset VARIANT`` (or ``--preset=VARIANT``) becomes the packaged config file's
    ``--config=<file>:KIND:VARIANT``."""
    out, it = [], iter(argv)
    for arg in it:
        if arg == "--preset" or arg.startswith("--preset="):
            variant = arg.partition("=")[2] if "=" in arg else next(it, None)
            if not variant:
                raise UsageError("--preset needs a variant name, e.g. --preset smoke")
            out.append(f"--config={CONFIG_FILE}:{kind}:{variant}")
        else:
            out.append(arg)
    return out


def _wants_help(argv: list[str]) -> bool:
    return any(a in ("-h", "--help", "--helpfull", "--helpshort") for a in argv)


def _parse(kind: str, argv: list[str]):
    """``(config_dict, overridden)`` from the command line: ``--config``/``--preset`` and
    ``--config.x.y=value`` overrides."""
    from absl import flags
    from ml_collections import config_flags

    argv = _config_args(kind, argv)
    values = flags.FlagValues()
    holder = config_flags.DEFINE_config_file(
        "config", None, "Config file[:arg].", flag_values=values, lock_config=True
    )
    # ml-collections finds the overrides in sys.argv itself: it must hold this command line.
    saved, sys.argv = sys.argv, [f"rlhf-jax {kind}", *argv]
    try:
        extra = values(sys.argv)[1:]
    except flags.Error as e:
        raise UsageError(f"{e}") from None
    except (AttributeError, KeyError, TypeError) as e:  # an override ml-collections refused
        detail = str(e.args[0] if e.args else e).replace("\\'", "'").replace("\\n", " ")
        if len(detail) > 1 and detail[0] == detail[-1] == "'":
            detail = detail[1:-1]
        detail = " ".join(detail.split())
        raise UsageError(f"bad config override: {detail}") from None
    finally:
        sys.argv = saved
    if extra:
        raise UsageError(f"unexpected argument(s): {' '.join(extra)}")
    if holder.value is None:
        raise UsageError(
            f"a config is required: --preset VARIANT (e.g. --preset smoke) or --config FILE[:ARG] "
            f"(e.g. --config configs/{kind}.py:smoke); `rlhf-jax config show {kind}:smoke` lists "
            "the fields"
        )
    return holder.value, dict(config_flags.get_override_values(values["config"]))


def _help(kind: str, argv: list[str]) -> int:
    from rlhf_jax.training.config import describe

    print(f"rlhf-jax {'train ' if kind in PHASES else ''}{kind} (--preset VARIANT | --config "
          f"FILE[:ARG]) [--config.FIELD=VALUE ...] [--debug]\n")  # fmt: skip
    argv = [a for a in argv if not _wants_help([a])]
    try:
        config, _ = _parse(kind, argv or ["--preset", "smoke"])
    except UsageError:
        config, _ = _parse(kind, ["--preset", "smoke"])
    print("Fields (the values of the preset given, else of smoke):")
    print(describe(_config_type(kind), config.to_dict()))
    return 0


def _config_type(kind: str):
    if kind == "ppo":
        from rlhf_jax.training.ppo import PPORunConfig

        return PPORunConfig
    if kind == "evaluate":
        from rlhf_jax.policy_eval import PolicyEvalConfig

        return PolicyEvalConfig
    from rlhf_jax.training.entry import PHASES as OFFLINE

    return OFFLINE[kind].config_type


def _quiet_libraries() -> None:
    """The data report says what was read; `datasets`' own progress bars only add noise."""
    import datasets

    datasets.disable_progress_bars()


def train(phase: str, argv: list[str]) -> int:
    if _wants_help(argv):
        return _help(phase, argv)
    config, overridden = _parse(phase, argv)
    _quiet_libraries()
    from rlhf_jax.training import entry

    if phase == "ppo":
        entry.run_ppo_from_config(config, overrides=overridden)
    else:
        entry.run_from_config(config, kind=phase, overrides=overridden)
    return 0


def evaluate(argv: list[str]) -> int:
    if _wants_help(argv):
        return _help("evaluate", argv)
    config, overridden = _parse("evaluate", argv)
    _quiet_libraries()
    from absl import logging as absl_logging

    from rlhf_jax.policy_eval import PolicyEvalConfig, evaluate_policies
    from rlhf_jax.presets.overrides import resolve
    from rlhf_jax.training.config import build

    absl_logging.set_verbosity(absl_logging.WARNING)
    resolved, notes = resolve(config.to_dict(), overridden, kind="evaluate")
    for note in notes:
        print(f"[evaluate] {note}")
    result = evaluate_policies(build(PolicyEvalConfig, resolved))
    print(f"[evaluate] {json.dumps(result['policies'])}")
    for name, w in result["win_rates"].items():
        print(
            f"[evaluate] win rate {name}: {w['rate']:.3f} [{w['ci_low']:.3f}, {w['ci_high']:.3f}]"
        )
    print(f"[evaluate] report: {result['report']}")
    return 0


def show(spec: str) -> int:
    """``config show PHASE[:VARIANT]`` or ``config show FILE.py[:ARG]``: every field of the
    config with its value and the comment that documents it."""
    from rlhf_jax.training.config import describe

    if spec.partition(":")[0].endswith(".py"):
        path = spec.partition(":")[0]
        kind = pathlib.Path(path).stem
        if kind not in (*PHASES, "evaluate"):
            raise UsageError(f"{path}: config show knows the files of {(*PHASES, 'evaluate')}")
        config, _ = _parse(kind, [f"--config={spec}"])
    else:
        kind = spec.partition(":")[0]
        if kind not in (*PHASES, "evaluate"):
            raise UsageError(f"config show {spec}: PHASE is one of {(*PHASES, 'evaluate')}")
        config, _ = _parse(kind, [f"--config={CONFIG_FILE}:{spec}"])
    print(describe(_config_type(kind), config.to_dict()))
    return 0
