"""The training stages' subcommands: ``handserve train``, ``evaluate``, ``export`` and ``verify``.

Each stage has a ``configure_*`` (its flags) and a ``run_*`` (parse, call the stage, print the
result). This module imports no TensorFlow: flags come from :mod:`training.config` and the
constants of the stage modules (which import TensorFlow only inside their functions), and
:mod:`training.train` is imported only when a run starts, so ``handserve train --help`` prints
at once. Results go to stdout (scripts read them), errors to stderr, both through :func:`say`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from handserve.artifacts import ArtifactError
from handserve.configs import ConfigError
from training import run_folder
from training.config import TrainConfig

#: TrainConfig fields that describe the data, offered as ``handserve evaluate`` flags.
DATA_FIELDS = (
    "data_dir",
    "image_size",
    "color_mode",
    "val_fraction",
    "test_fraction",
    "limit",
    "seed",
    "batch_size",
    "crop_hands",
)


def say(text: str, *, err: bool = False) -> None:
    """CLI output: results on stdout (scripts read them), errors on stderr."""
    print(text, file=sys.stderr if err else sys.stdout)


# --------------------------------------------------------------------------- train


def configure_train(parser: argparse.ArgumentParser) -> None:
    """``handserve train`` flags: ``--config FILE``, one flag per TrainConfig field."""
    parser.add_argument("--config", type=Path, default=None, help="YAML/TOML/JSON config file")
    parser.add_argument(
        "--list-backbones", action="store_true", help="list the backbone names and exit"
    )
    TrainConfig.add_arguments(parser)


def run_train(args: argparse.Namespace) -> int:
    """Entry point of ``handserve train``; prints the run folder and report on stdout.

    The config is checked before the stage modules (and so TensorFlow) are imported: a wrong
    value in a config file is reported at once, as a wrong flag is by argparse.
    """
    if args.list_backbones:
        from training import model as model_mod

        say(model_mod.list_backbones())
        return 0
    try:
        cfg = TrainConfig.load(args.config, flags=TrainConfig.flags_given(args))
    except ConfigError as exc:
        say(f"error: {exc}", err=True)
        return 2
    from training.data import DataError
    from training.export import ExportError, export_run
    from training.train import train

    try:
        # Keras writes progress to stdout; keep stdout for the result lines scripts read.
        with contextlib.redirect_stdout(sys.stderr):
            result = train(cfg)
    except (DataError, ConfigError, ArtifactError) as exc:
        say(f"error: {exc}", err=True)
        return 2
    say(f"run: {result.run_dir}")
    say(f"report: {result.run_dir / run_folder.METRICS}")
    if cfg.export:
        try:
            export_dir = export_run(result.run_dir, Path(cfg.models_dir), result.export_name)
        except (ArtifactError, ExportError) as exc:
            # The run folder is finished and kept when only the export failed (said above).
            say(f"error: {exc}", err=True)
            return 2
        say(f"export: {export_dir}")
    return 0


# --------------------------------------------------------------------------- evaluate


def configure_evaluate(parser: argparse.ArgumentParser) -> None:
    """``handserve evaluate MODEL_OR_RUN --dataset X [data flags] [--output FILE]``."""
    parser.add_argument("model", type=Path, metavar="MODEL_OR_RUN")
    parser.add_argument("--output", type=Path, default=None, help="write the report as JSON here")
    TrainConfig.add_arguments(parser, only=("dataset", *DATA_FIELDS))


def run_evaluate(args: argparse.Namespace) -> int:
    """Entry point of ``handserve evaluate``."""
    from training import evaluate
    from training.data import DataError

    try:
        overrides = TrainConfig.flags_given(args)
        model_file = evaluate.find_model_file(args.model)
        # Folder datasets have no native size: default to the one the model was trained on.
        for key, value in run_folder.data_defaults(model_file.parent).items():
            overrides.setdefault(key, value)
        cfg = TrainConfig.load(flags=overrides)
        report = evaluate.evaluate(model_file, cfg)
    except (DataError, ConfigError, run_folder.RunFolderError) as exc:
        say(f"error: {exc}", err=True)
        return 2
    report.pop("confusion_matrix", None)
    say(evaluate.format_table(report))
    if args.output:
        args.output.write_text(json.dumps(report, indent=2) + "\n")
        say(f"report: {args.output}")
    return 0


# --------------------------------------------------------------------------- export


def configure_export(parser: argparse.ArgumentParser) -> None:
    from training.export import FORMAT_CHOICES

    parser.add_argument("run_dir", type=Path, metavar="RUN_FOLDER", help="a finished run folder")
    parser.add_argument("--name", required=True, help="model name (a-z, 0-9, '.', '_', '-')")
    parser.add_argument("--models-dir", type=Path, default=Path("models"), help="models folder")
    parser.add_argument(
        "--data-dir", help="measure per-format metrics on this dataset's full test split"
    )
    parser.add_argument("--dataset", help="dataset name for --data-dir (default: the run's)")
    parser.add_argument(
        "--no-verify", action="store_true", help="skip the parity check (no per-format metrics)"
    )
    parser.add_argument("--num-threads", type=int, default=None, help="LiteRT threads")
    parser.add_argument(
        "--formats",
        default=",".join(FORMAT_CHOICES),
        help="LiteRT files to build, comma-separated from fp32, fp16, int8 (default: all; "
        "fp32, the served file, is always built)",
    )


def run_export(args: argparse.Namespace) -> int:
    from training import verify
    from training.export import ExportError, export_run, parse_formats, report_left_out

    try:
        test_data = None
        if args.data_dir:
            config = run_folder.RunFolder(args.run_dir).read_config()
            test_data = verify.load_test_split(config, args.data_dir, args.dataset)
        path = export_run(
            args.run_dir,
            args.models_dir,
            args.name,
            verify=not args.no_verify,
            test_data=test_data,
            num_threads=args.num_threads,
            formats=parse_formats(args.formats),
        )
    except (ExportError, ArtifactError, ValueError) as exc:
        say(f"export failed: {exc}", err=True)
        return 1
    for line in report_left_out(path):
        say(line, err=True)
    say(str(path))
    return 0


# --------------------------------------------------------------------------- verify


def configure_verify(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("version_dir", type=Path, help="models/NAME/VERSION")
    parser.add_argument(
        "--data-dir", help="check on the full test split of the dataset in this folder"
    )
    parser.add_argument("--dataset", help="dataset name (default: the one the model trained on)")
    parser.add_argument("--num-threads", type=int, default=None, help="LiteRT threads")
    parser.add_argument(
        "--speed-seconds",
        type=float,
        default=1.0,
        help="seconds per format and batch size spent measuring images/s (0: skip)",
    )
    parser.add_argument("--limit", type=int, default=None, help="use at most this many images")


def run_verify(args: argparse.Namespace) -> int:
    from training import verify

    try:
        report = verify.verify_version(
            args.version_dir,
            data_dir=args.data_dir,
            dataset=args.dataset,
            num_threads=args.num_threads,
            speed_seconds=args.speed_seconds,
            limit=args.limit,
        )
    except (ArtifactError, ValueError) as exc:  # ValueError: DataError, ConfigError, no test split
        say(f"verify failed: {exc}", err=True)
        return 1
    say(verify.format_table(report))
    say(verify.format_metadata(report))
    if report.failures:
        say("parity bounds failed:\n" + "\n".join(f"  {f}" for f in report.failures), err=True)
        return 1
    say(f"{args.version_dir}: checksums ok, input contract ok, parity ok")
    return 0
