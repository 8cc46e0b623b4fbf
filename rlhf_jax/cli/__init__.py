"""The ``rlhf-jax`` command (installed with the package; also ``python -m rlhf_jax``).

    rlhf-jax train sft    --preset smoke --config.total_steps=20     # or --config FILE[:VARIANT]
    rlhf-jax train reward --preset smoke --config.model.artifact=runs/sft/artifact
    rlhf-jax train dpo | ppo ...
    rlhf-jax evaluate --preset smoke                                 # judge policies, a report
    rlhf-jax export   ARTIFACT OUT_DIR [--dtype bfloat16]            # an HF checkpoint
    rlhf-jax generate MODEL --prompt "..." [--temperature 0]         # sample a policy
    rlhf-jax score    REWARD_MODEL --data pairs.jsonl                # a reward model's scores
    rlhf-jax report   RUN_DIR [RUN_DIR ...]                          # training curves, report.md
    rlhf-jax config show PHASE[:VARIANT]                             # every field, commented

A mistake a user can make (a bad config value, a missing file, a checkpoint of another
configuration, malformed data) prints one message and exits with status 2; ``--debug`` (or
``RLHF_JAX_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

USAGE = __doc__.split("\n\n")[1]
EXIT_USER_ERROR = 2


class UsageError(ValueError):
    """A command line that cannot be run as given."""


PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _is_user_error(e: BaseException) -> bool:
    """An error of the kinds the package raises for a user's mistake (a bad value, a missing
    file, a checkpoint of another configuration, a non-finite loss, a missing optional
    dependency), raised by the package's own checks. The same kinds raised inside another
    library (a shape error in JAX, say) are bugs to report, and keep their traceback."""
    from absl import flags

    from rlhf_jax.checkpoint import CheckpointError
    from rlhf_jax.training.loop import NonFiniteError, RunLockedError

    if isinstance(e, UsageError | flags.Error):
        return True
    kinds = (ValueError, OSError, ImportError, CheckpointError, RunLockedError, NonFiniteError)
    if not isinstance(e, kinds):
        return False
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(PACKAGE)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command (``argv`` without the program name); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("RLHF_JAX_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else EXIT_USER_ERROR
    try:
        return _dispatch(argv[0], argv[1:]) or 0
    except BaseException as e:
        if debug or not _is_user_error(e):
            raise
        message = str(e).strip() or type(e).__name__
        print(f"error: {message}", file=sys.stderr)
        print("(rerun with --debug, or RLHF_JAX_DEBUG=1, for the traceback)", file=sys.stderr)
        return EXIT_USER_ERROR


def _dispatch(command: str, args: list[str]) -> int | None:
    from rlhf_jax.cli import tools, train

    if command == "train":
        if not args or args[0] not in train.PHASES:
            raise UsageError(f"rlhf-jax train PHASE: PHASE is one of {', '.join(train.PHASES)}")
        return train.train(args[0], args[1:])
    if command == "evaluate":
        return train.evaluate(args)
    if command == "config":
        if not args or args[0] != "show" or len(args) != 2:
            raise UsageError("rlhf-jax config show PHASE[:VARIANT] (or a config file[:arg])")
        return train.show(args[1])
    commands = {"export": tools.export, "generate": tools.generate, "score": tools.score,
                "report": tools.report}  # fmt: skip
    if command not in commands:
        raise UsageError(f"unknown command {command!r}\n{USAGE}")
    return commands[command](args)


def run() -> None:
    """The console script: signal handlers first (a signal during start-up is caught too)."""
    from rlhf_jax import interrupts

    interrupts.install()
    sys.exit(main())
