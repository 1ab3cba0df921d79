"""``handserve models``: the models in a models folder, their versions, sizes and accuracy.

    handserve models [--models-dir models] [--json]

Reads only ``manifest.json`` files through :mod:`handserve.artifacts`, never TensorFlow, so it
answers instantly and works on a LiteRT-only server. Checksums are not verified here (that reads
every byte); ``handserve verify`` and the service do that before trusting a version.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from handserve import artifacts
from handserve.artifacts import ArtifactError


@dataclass(frozen=True)
class VersionInfo:
    """One published version as the listing shows it; ``error`` is set if its manifest is bad."""

    name: str
    version: int
    latest: bool
    created_at: str = ""
    size: int = 0
    test_accuracy: float | None = None
    accuracy_source: str = ""
    formats: tuple[str, ...] = ()
    error: str = ""


def _test_accuracy(metrics: dict[str, Any]) -> tuple[float | None, str]:
    """The run's test accuracy; else the Keras accuracy measured at export on its samples."""
    test = metrics.get("test")
    if isinstance(test, dict) and isinstance(test.get("accuracy"), int | float):
        return float(test["accuracy"]), "test"
    evaluation = metrics.get("export_evaluation")
    if isinstance(evaluation, dict):
        keras = evaluation.get("keras") or {}
        if isinstance(keras.get("accuracy"), int | float):
            return float(keras["accuracy"]), "samples"
    return None, ""


def list_versions(models_dir: Path) -> list[VersionInfo]:
    """Every published version under ``models_dir``, by name then version."""
    out = []
    for name, versions in artifacts.list_models(Path(models_dir)).items():
        for version in versions:
            path = Path(models_dir) / name / str(version)
            latest = version == versions[-1]
            try:
                manifest = artifacts.read_manifest(path)
            except ArtifactError as exc:
                out.append(VersionInfo(name, version, latest, error=str(exc)))
                continue
            accuracy, source = _test_accuracy(manifest.metrics)
            out.append(
                VersionInfo(
                    name=name,
                    version=version,
                    latest=latest,
                    created_at=manifest.created_at,
                    size=sum(f.size for f in manifest.files),
                    test_accuracy=accuracy,
                    accuracy_source=source,
                    formats=tuple(manifest.formats),
                )
            )
    return out


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def format_listing(infos: list[VersionInfo]) -> str:
    """A plain table: one line per version, ``*`` marks the latest of each name."""
    rows = [("NAME", "VERSION", "CREATED", "SIZE", "TEST ACC", "FORMATS")]
    for i in infos:
        version = f"{i.version}{' *' if i.latest else ''}"
        if i.error:
            rows.append((i.name, version, "-", "-", "-", f"invalid: {i.error}"))
            continue
        acc = "-" if i.test_accuracy is None else f"{100 * i.test_accuracy:.2f}%"
        if i.accuracy_source == "samples":
            acc += " (samples)"
        rows.append((i.name, version, i.created_at, _mb(i.size), acc, ", ".join(i.formats)))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join([*lines, "* latest (the highest version)"])


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models-dir", type=Path, default=Path("models"), help="models folder")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    infos = list_versions(args.models_dir)
    if args.json:
        sys.stdout.write(json.dumps([asdict(i) for i in infos], indent=2) + "\n")
    elif not infos:
        sys.stdout.write(f"no models in {args.models_dir}\n")
    else:
        sys.stdout.write(format_listing(infos) + "\n")
    return 0
