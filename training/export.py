"""Export a finished run folder as an immutable, checksummed model version.

    handserve export runs/RUN --name NAME [--models-dir models] [--data-dir D]

Writes ``models/NAME/VERSION/`` (layout in ``handserve/artifacts.py`` and ``docs/artifacts.md``):
a SavedModel for servers, three LiteRT files for phones (float32, float16 weights, full-integer
int8), the Keras model, labels, the run's report, labelled samples and ``manifest.json``.
The LiteRT conversion and its checks are in :mod:`training.litert`. Everything is built in a
hidden staging folder and renamed into place only after every format
has been converted, checked to use built-in LiteRT operators only, and compared with Keras
(:mod:`training.verify`), so a version that exists is complete and has passed parity once.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from handserve import artifacts
from handserve.artifacts import (
    EMBEDDED_LABELS,
    EMBEDDED_METADATA,
    FormatEntry,
    Manifest,
)
from training import run_folder
from training.formats import (  # noqa: F401 - also imported from here by callers
    INPUT_NAME,
    OUTPUT_NAME,
    REQUIRED_FORMATS,
    keep_what_passes,
    write_saved_model,
)
from training.litert import (
    TFLITE_FORMATS,
    ExportError,
    check_builtin_only,
    check_tflite_file,
    convert_tflite,
    embed_metadata,
    non_builtin_operators,
    operator_names,
    write_rgb_saved_model,
)
from training.run_folder import REPORT_FILES, FinishedRun, RunFolder, RunFolderError
from training.tflite_metadata import ImageModelInfo

__all__ = [
    "TFLITE_FORMATS",
    "ExportError",
    "convert_tflite",
    "export_run",
    "non_builtin_operators",
    "operator_names",
    "parse_formats",
    "report_left_out",
]

log = logging.getLogger(__name__)


SAVED_MODEL = artifacts.SAVED_MODEL
#: ``--formats`` names: the LiteRT files an export may build (the table's ``flag`` column).
FORMAT_CHOICES = {f.flag: k for k, f in artifacts.FORMATS.items() if f.flag}


def read_run(run_dir: Path) -> FinishedRun:
    """The finished run folder at ``run_dir``, checked (:func:`training.run_folder.read_finished`).

    Raises:
        ExportError: naming the file that is missing or inconsistent.
    """
    try:
        return run_folder.read_finished(run_dir)
    except RunFolderError as exc:
        raise ExportError(str(exc)) from exc


def _load_model(run: FinishedRun) -> Any:
    """Load ``model.keras`` and check it takes the contract's shape and outputs one prob/label."""
    import keras

    path = run.path / run_folder.MODEL
    model = keras.models.load_model(path, compile=False)
    got_in = tuple(model.input_shape[1:])
    if got_in != run.contract.shape:
        raise ExportError(f"{path}: input shape {got_in} != dataset.json {run.contract.shape}")
    got_out = model.output_shape[-1]
    if got_out != len(run.labels):
        raise ExportError(f"{path}: {got_out} outputs but labels.txt has {len(run.labels)}")
    return model


# ---------------------------------------------------------------------------------------------
# The export


# Over 60 lines by its docstring only (the arguments and the refusals a caller must know).
def export_run(
    run_dir: Path,
    models_dir: Path,
    name: str,
    *,
    verify: bool = True,
    test_data: tuple[np.ndarray, np.ndarray, str] | None = None,
    num_threads: int | None = None,
    formats: tuple[str, ...] | None = None,
) -> Path:
    """Export a run folder as the next version of ``models_dir/name`` and return its path.

    Args:
        run_dir: a finished run folder (docs/architecture.md).
        models_dir: the models folder; ``name/`` is created inside it if needed.
        name: model name (lower case, see :func:`handserve.artifacts.validate_name`).
        verify: run every format on labelled images and record per-format metrics in the
            manifest. A format that misses :data:`training.verify.PARITY_BOUNDS` is left out of
            the version (its file deleted, the reason recorded under
            ``metrics.export_evaluation.left_out``); if it is one of :data:`REQUIRED_FORMATS`
            nothing is published. ``False`` skips the check (no per-format metrics).
        test_data: ``(x, y, description)`` to measure on (e.g. the full test split) instead of
            the run's ``samples.npz``.
        num_threads: LiteRT interpreter threads for the parity run.
        formats: manifest keys of the LiteRT files to build (default: all of
            :data:`TFLITE_FORMATS`); the :data:`REQUIRED_FORMATS` are always built.

    Raises:
        ExportError: the run folder is incomplete, a conversion used Flex ops, or a required
            format failed parity.
        ArtifactError: the name is invalid, or the version appeared meanwhile (concurrent export).
    """
    models_dir = Path(models_dir)
    artifacts.validate_name(name)
    from training import hand_export  # it builds on this module

    if hand_export.is_hand_run(run_dir):
        return hand_export.export_hand_run(
            run_dir, models_dir, name, verify=verify, num_threads=num_threads, formats=formats
        )
    run = read_run(run_dir)
    model = _load_model(run)
    with artifacts.staging_version(models_dir, name) as (tmp, version):
        log.info("exporting %s as %s/%d", run.path, name, version)
        _copy_run_files(run, tmp)

        write_saved_model(model, tmp / SAVED_MODEL.path, run.contract)
        wanted = {*(formats or [f.key for f in TFLITE_FORMATS]), *REQUIRED_FORMATS}
        built = _build_tflite(tmp, run, model, name, version, wanted)
        evaluation: dict[str, Any] | None = None
        if verify:
            built, evaluation = keep_what_passes(
                tmp, built, model, test_data, num_threads, f"{name}/{version}"
            )

        manifest = Manifest(
            name=name,
            version=version,
            labels=run.labels,
            input=run.contract,
            formats=built,
            files=artifacts.file_entries(tmp),
            created_at=artifacts.now_iso(),
            backbone=run.backbone,
            training=run.config,
            metrics={**run.metrics, "export_evaluation": evaluation},
            # The run's record: the versions that trained the model (docs/architecture.md).
            library_versions=run.environment,
        )
        artifacts.write_manifest(tmp, manifest)
        artifacts.verify_files(tmp, artifacts.read_manifest(tmp))
        return artifacts.publish(tmp, models_dir, name, version)


def _build_tflite(
    tmp: Path, run: FinishedRun, model: Any, name: str, version: int, wanted: set[str]
) -> dict[str, FormatEntry]:
    """The SavedModel's entry and every wanted LiteRT file: converted, checked, labelled.

    The LiteRT files of a grayscale model take RGB and compute the luma in their graph (task
    libraries on phones feed RGB); the SavedModel keeps the contract's one channel.
    """
    saved = FormatEntry(
        path=SAVED_MODEL.path,
        kind=SAVED_MODEL.kind,
        precision=SAVED_MODEL.precision,
        input_shape=list(run.contract.shape),
    )
    built: dict[str, FormatEntry] = {SAVED_MODEL.key: saved}
    calibration = RunFolder(run.path).read_calibration()
    gray = run.contract.channels == 1
    rgb_sources: dict[bool, Path] = {}  # a grayscale model's RGB entry points, by exactness
    with tempfile.TemporaryDirectory(prefix="handserve-rgb-") as scratch:
        for fmt in (f for f in TFLITE_FORMATS if f.key in wanted):
            log.info("converting %s", fmt.path)
            source = tmp / SAVED_MODEL.path
            if gray:  # each written once, for the files that share it
                exact = fmt.precision != "int8"
                if exact not in rgb_sources:
                    rgb_sources[exact] = Path(scratch) / ("exact" if exact else "weighted-sum")
                    write_rgb_saved_model(model, rgb_sources[exact], exact=exact)
                source = rgb_sources[exact]
            data, entry = convert_tflite(source, fmt.precision, calibration, rgb=gray)
            path = tmp / fmt.path
            path.write_bytes(data)
            ops = check_builtin_only(path)
            log.info("%s: %d bytes, operators %s", fmt.path, len(data), ", ".join(ops))
            entry = dataclasses.replace(entry, path=fmt.path)
            embed_metadata(
                path,
                run.labels,
                _embedded_metadata(name, version, run, entry),
                _metadata_info(name, version, run, entry),
            )
            check_tflite_file(path, run.labels)
            built[fmt.key] = entry
    return built


def _copy_run_files(run: FinishedRun, dest: Path) -> None:
    for filename in (run_folder.MODEL, run_folder.LABELS, run_folder.SAMPLES):
        shutil.copy2(run.path / filename, dest / filename)
    report = dest / artifacts.REPORT_DIR
    report.mkdir()
    for filename in REPORT_FILES:
        if (run.path / filename).is_file():
            shutil.copy2(run.path / filename, report / filename)
        else:
            log.warning("%s: not in the run folder; the report will lack it", filename)
    for png in sorted(run.path.glob("*.png")):
        shutil.copy2(png, report / png.name)


def _metadata_info(name: str, version: int, run: FinishedRun, entry: FormatEntry) -> ImageModelInfo:
    """The facts the TFLite Metadata states, from what the manifest records."""
    contract = run.contract
    backbone = run.backbone.get("name", "a Keras model")
    return ImageModelInfo(
        name=name,
        version=version,
        description=(
            f"Image classifier, {len(run.labels)} classes ({backbone}, {entry.precision}), "
            f"exported by handserve. Takes an RGB image of {contract.width}x{contract.height} "
            f"pixels, values 0-255 (trained on {contract.color_mode} images)."
        ),
        labels_file=EMBEDDED_LABELS,
        other_files=(EMBEDDED_METADATA,),
        value_range=contract.value_range,
    )


def _embedded_metadata(
    name: str, version: int, run: FinishedRun, entry: FormatEntry
) -> dict[str, Any]:
    """What an app needs besides the labels: the input contract and tensor types of this file.

    ``input.channels`` and ``color_mode`` are what to decode an image to (the contract); the
    file's tensor (``input.tensor_shape``) takes RGB for a grayscale model, which computes the
    luma itself (feed the RGB image, or the grey one three times)."""
    contract = run.contract
    return {
        "name": name,
        "version": version,
        "precision": entry.precision,
        "input": {
            "height": contract.height,
            "width": contract.width,
            "channels": contract.channels,
            "color_mode": contract.color_mode,
            "tensor_shape": entry.input_shape,
            "layout": "NHWC",
            "value_range": list(contract.value_range),
            "dtype": entry.input_dtype,
            "scale": entry.input_scale,
            "zero_point": entry.input_zero_point,
            "resize": "bilinear",
            "alpha": "composite on white",
            # "hand": crop to the hand first (handserve.hands' rule; docs/mobile.md)
            "crop": contract.crop,
        },
        "output": {
            "dtype": entry.output_dtype,
            "scale": entry.output_scale,
            "zero_point": entry.output_zero_point,
            "meaning": "softmax probabilities, index order = labels.txt",
        },
        "num_classes": len(run.labels),
    }


# ---------------------------------------------------------------------------------------------
# --formats and what an export left out, for the CLI (training/cli.py)


def parse_formats(text: str) -> tuple[str, ...]:
    """``fp32,int8`` -> manifest keys; an unknown name is a ValueError naming the choices."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in FORMAT_CHOICES]
    if unknown:
        raise ValueError(
            f"--formats: unknown {', '.join(unknown)}; choose from {', '.join(FORMAT_CHOICES)}"
        )
    return tuple(FORMAT_CHOICES[n] for n in names)


def report_left_out(path: Path) -> list[str]:
    """One line per format an export left out and why (the version is still good)."""
    evaluation = artifacts.read_manifest(path).metrics.get("export_evaluation") or {}
    left_out = evaluation.get("left_out") or {}
    return [f"left out {key} (parity): {'; '.join(reasons)}" for key, reasons in left_out.items()]
