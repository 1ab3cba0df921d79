"""The ``handserve`` command: one entry point, one subcommand per stage.

This package sits above the three rooms (``handserve/`` the shared base, ``training/``,
``service/``) and is the only code that imports both halves. Each subcommand is a pair of
functions, ``configure(parser)`` (its flags) and ``run(args) -> int``, taken from the module
that owns the stage by a plain import in :func:`_command`, so only the chosen stage is loaded.
The flag modules import no TensorFlow: ``handserve --help``, ``handserve train --help``,
``handserve models`` and ``handserve serve`` start in well under a second, and TensorFlow is
imported only once a training stage runs (after its C++ log level is set, see
:func:`_setup_logging`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable

from handserve_cli.failures import storage_failure
from handserve_cli.native_logs import drop_native_log_lines

Configure = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]

#: subcommand -> one-line help
COMMANDS: dict[str, str] = {
    "train": "train a classifier and write a run folder with its report",
    "evaluate": "score a trained model on a dataset",
    "export": "export a run to models/NAME/VERSION (SavedModel, LiteRT)",
    "verify": "check an export's checksums and parity across formats",
    "models": "list the models in the models folder",
    "serve": "start the REST service (BentoML)",
}

#: Subcommands that may import TensorFlow (``models`` and ``serve`` never do in this process).
TENSORFLOW_COMMANDS = frozenset({"train", "evaluate", "export", "verify"})


def _command(name: str) -> tuple[Configure, Run]:
    """The chosen subcommand's flags and entry point; only its module is imported."""
    if name == "models":
        from handserve_cli import models

        return models.configure, models.run
    if name == "serve":
        from service import cli as serve

        return serve.configure, serve.run
    from training import cli as stages

    return {
        "train": (stages.configure_train, stages.run_train),
        "evaluate": (stages.configure_evaluate, stages.run_evaluate),
        "export": (stages.configure_export, stages.run_export),
        "verify": (stages.configure_verify, stages.run_verify),
    }[name]


def _setup_logging(verbose: int) -> None:
    """Python logging at the asked level; TensorFlow's C++ logging only with ``-v``.

    TensorFlow reads ``TF_CPP_MIN_LOG_LEVEL`` when it is first imported, which no subcommand
    does before this runs; the lines it ignores are dropped by
    :func:`handserve_cli.native_logs.drop_native_log_lines`.
    """
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose == 1 else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if verbose < 2 else "0")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="handserve", description=__doc__.splitlines()[0])
    parser.add_argument(
        "-v", "--verbose", action="count", default=1, help="more logging (-vv: TensorFlow's too)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        # The subcommand's own flags are added in main(), after importing only its module.
        sub.add_parser(name, help=help_text, description=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Global flags may come before the subcommand (handserve -q train ...) or after it.
    index = next((i for i, a in enumerate(argv) if a in COMMANDS), None)
    if index is None:
        parser.parse_args(argv)  # prints help / errors for a missing or unknown command
        return 2
    pre = parser.parse_args(argv[: index + 1])
    command = argv[index]
    configure, run = _command(command)
    sub_parser = argparse.ArgumentParser(prog=f"handserve {command}", description=COMMANDS[command])
    sub_parser.add_argument("-v", "--verbose", action="count", default=pre.verbose)
    sub_parser.add_argument("-q", "--quiet", action="store_true", default=pre.quiet)
    configure(sub_parser)
    args = sub_parser.parse_args(argv[index + 1 :])
    verbose = 0 if args.quiet else args.verbose
    _setup_logging(verbose)
    # The training stages load TensorFlow, whose C++ start-up lines ignore its log level.
    quiet = verbose < 2 and command in TENSORFLOW_COMMANDS
    try:
        with drop_native_log_lines() if quiet else contextlib.nullcontext():
            return int(run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # A full disk, a read-only folder, a missing permission: one line naming the path and
        # the cause (handserve_cli.failures); any other exception keeps its traceback.
        line = storage_failure(exc)
        if line is None:
            raise
        print(f"handserve {command}: {line}", file=sys.stderr)
        return 1
