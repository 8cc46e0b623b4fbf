"""``rlhf-jax train PHASE``, ``rlhf-jax evaluate`` and ``rlhf-jax config show``: the commands
driven by an ml-collections config (a preset, or a config file) and its overrides."""

from __future__ import annotations

import json
import pathlib
import sys

from rlhf_jax.cli import UsageError

PHASES = ("sft", "reward", "dpo", "ppo")
CONFIG_FILE = pathlib.Path(__file__).resolve().parents[1] / "presets" / "config_file.py"


def _variants(kind: str) -> tuple[str, ...]:
    from rlhf_jax.presets import VARIANTS
    from rlhf_jax.presets.evaluate import EVAL_VARIANTS
    from rlhf_jax.presets.rl import RL_VARIANTS

    return {"ppo": RL_VARIANTS, "evaluate": EVAL_VARIANTS}.get(kind, VARIANTS)


def _config_args(kind: str, argv: list[str]) -> tuple[list[str], dict]:
    """``(argv, unset)``: ``--preset VARIANT`` becomes the packaged config file's
    ``--config=<file>:KIND:VARIANT``, first (ml-collections wants ``--config`` before its
    overrides); ``--config.x=None`` is taken out (ml-collections would parse 'None' as the
    field's type) and returned in ``unset``."""
    config, rest, unset, it = [], [], {}, iter(argv)
    for arg in it:
        if arg == "--preset" or arg.startswith("--preset="):
            variant = arg.partition("=")[2] if "=" in arg else next(it, None)
            if variant not in _variants(kind):
                raise UsageError(
                    f"--preset {variant!r}: the {kind} presets are {', '.join(_variants(kind))}"
                )
            config.append(f"--config={CONFIG_FILE}:{kind}:{variant}")
        elif arg.startswith("--config.") and arg.endswith("=None"):
            unset[arg[len("--config.") : -len("=None")]] = None
        elif arg.startswith("--config=") or arg == "--config":
            config.append(arg if arg != "--config" else f"--config={next(it, '')}")
        else:
            rest.append(arg)
    return [*config, *rest], unset


def _wants_help(argv: list[str]) -> bool:
    return any(a in ("-h", "--help", "--helpfull", "--helpshort") for a in argv)


def _last_line(message: str) -> str:
    """ml-collections embeds a config file's whole traceback in its message: its last line."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return lines[-1] if lines else str(message)


def _parse(kind: str, argv: list[str]):
    """``(config_dict, overridden)`` from the command line: ``--config``/``--preset`` and
    ``--config.x.y=value`` overrides (``=None`` unsets an optional field)."""
    import ml_collections
    from absl import flags
    from ml_collections import config_flags

    argv, unset = _config_args(kind, argv)
    values = flags.FlagValues()
    holder = config_flags.DEFINE_config_file(
        "config", None, "Config file[:arg].", flag_values=values, lock_config=True
    )
    # ml-collections finds the overrides in sys.argv itself: it must hold this command line.
    saved, sys.argv = sys.argv, [f"rlhf-jax {kind}", *argv]
    try:
        extra = values(sys.argv)[1:]
        config = holder.value
    except flags.Error as e:
        raise UsageError(_last_line(e)) from None
    except OSError as e:  # a config file that is not there (ml-collections defers it)
        raise UsageError(f"config file: {e}") from None
    except (AttributeError, KeyError, TypeError) as e:  # an override ml-collections refused
        detail = str(e.args[0] if e.args else e).replace("\\'", "'").replace("\\n", " ")
        if len(detail) > 1 and detail[0] == detail[-1] == "'":
            detail = detail[1:-1]
        raise UsageError(f"bad config override: {' '.join(detail.split())}") from None
    finally:
        sys.argv = saved
    if extra:
        raise UsageError(f"unexpected argument(s): {' '.join(extra)}")
    if config is None:
        raise UsageError(
            f"a config is required: --preset VARIANT (e.g. --preset smoke) or --config FILE[:ARG] "
            f"(e.g. --config configs/{kind}.py:smoke); `rlhf-jax config show {kind}:smoke` lists "
            "the fields"
        )
    if not isinstance(config, ml_collections.ConfigDict):
        try:  # ml-collections' stand-in for a file it could not read: any access raises
            config.to_dict()
        except OSError as e:
            raise UsageError(f"config file: {_last_line(e)}") from None
        raise UsageError(f"--config did not give a config: {config!r}")
    overridden = dict(config_flags.get_override_values(values["config"]))
    return config, {**overridden, **unset}


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
