"""The ``handserve`` command: one entry point, one subcommand per stage.

Each subcommand lives in the module that does the work and exposes ``configure(parser)`` and
``run(args) -> int``. Modules are imported only when their subcommand runs, so ``handserve serve``
and ``handserve models`` start without importing TensorFlow.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("training.train", "train a classifier and write a run folder with its report"),
    "evaluate": ("training.evaluate", "score a trained model on a dataset"),
    "export": ("training.export", "export a run to models/NAME/VERSION (SavedModel, LiteRT)"),
    "verify": ("training.verify", "check an export's checksums and parity across formats"),
    "models": ("handserve.registry", "list the models in the models folder"),
    "serve": ("service.cli", "start the REST service (BentoML)"),
}


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose == 1 else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # TensorFlow's C++ banner lines are noise for a CLI user unless asked for.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if verbose < 2 else "0")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="handserve", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=1, help="more logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
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
    # Only the chosen subcommand's module is imported, then it adds its own flags.
    module = importlib.import_module(COMMANDS[command][0])
    sub_parser = argparse.ArgumentParser(
        prog=f"handserve {command}", description=COMMANDS[command][1]
    )
    sub_parser.add_argument("-v", "--verbose", action="count", default=pre.verbose)
    sub_parser.add_argument("-q", "--quiet", action="store_true", default=pre.quiet)
    module.configure(sub_parser)
    args = sub_parser.parse_args(argv[index + 1 :])
    _setup_logging(0 if args.quiet else args.verbose)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
