"""Export a finished run folder as an immutable, checksummed model version.

    handserve export runs/RUN --name NAME [--models-dir models] [--data-dir D]

Writes ``models/NAME/VERSION/`` (layout in ``handserve/artifacts.py`` and ``docs/artifacts.md``):
a SavedModel for servers, three LiteRT files for phones (float32, float16 weights, full-integer
int8), the Keras model, labels, the run's report, labelled samples and ``manifest.json``.
Everything is built in a hidden staging folder and renamed into place only after every format
has been converted, checked to use built-in LiteRT operators only, and compared with Keras
(:mod:`training.verify`), so a version that exists is complete and has passed parity once.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import logging
import platform
import shutil
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from handserve import artifacts
from handserve.artifacts import ArtifactError, FormatEntry, InputContract, Manifest
from training import verify as verify_mod

log = logging.getLogger(__name__)

#: What a run folder must hold for an export (docs/architecture.md, "Run folder").
RUN_FILES = (
    "model.keras",
    "labels.txt",
    "config.json",
    "dataset.json",
    "backbone.json",
    "metrics.json",
    "samples.npz",
    "calibration.npz",
)
#: Copied into ``report/`` when present; a run from an older trainer may lack some.
REPORT_FILES = (
    "config.json",
    "history.json",
    "metrics.json",
    "dataset.json",
    "environment.json",
    "backbone.json",
)


@dataclass(frozen=True)
class TFLiteSpec:
    """One LiteRT file an export writes: its manifest key, file name and precision."""

    key: str
    filename: str
    precision: str  # "float32", "float16" or "int8"


#: The LiteRT files, in the order they are converted. The manifest's ``formats`` uses these keys.
TFLITE_FORMATS = (
    TFLiteSpec("tflite_fp32", "model.tflite", "float32"),
    TFLiteSpec("tflite_fp16", "model_fp16.tflite", "float16"),
    TFLiteSpec("tflite_int8", "model_int8.tflite", "int8"),
)
SAVED_MODEL_KEY = "saved_model"
SAVED_MODEL_DIR = "saved_model"
#: Formats a version cannot be published without: what the service runs (``model.tflite`` on
#: CPU, the SavedModel on GPU). Any other format that misses its parity bound is left out.
REQUIRED_FORMATS = (SAVED_MODEL_KEY, "tflite_fp32")
#: ``--formats`` names: the LiteRT files an export may build.
FORMAT_CHOICES = {"fp32": "tflite_fp32", "fp16": "tflite_fp16", "int8": "tflite_int8"}
#: Name of the SavedModel signature's input and output tensors.
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
#: Files of the zip archive appended to every ``.tflite`` (see docs/mobile.md).
EMBEDDED_LABELS = "labels.txt"
EMBEDDED_METADATA = "metadata.json"


class ExportError(Exception):
    """A run folder that cannot be exported, or a conversion that failed a check."""


@dataclass(frozen=True)
class RunFolder:
    """The parts of a run folder an export reads, checked for consistency."""

    path: Path
    labels: list[str]
    contract: InputContract
    config: dict[str, Any]
    dataset: dict[str, Any]
    backbone: dict[str, Any]
    metrics: dict[str, Any]


def read_run(run_dir: Path) -> RunFolder:
    """Read and cross-check a finished run folder.

    Raises:
        ExportError: naming the file that is missing or inconsistent.
    """
    run_dir = Path(run_dir)
    if run_dir.name.endswith(".partial"):
        raise ExportError(f"{run_dir}: run is unfinished (.partial); training did not complete")
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: run folder not found")
    for name in RUN_FILES:
        if not (run_dir / name).is_file():
            raise ExportError(f"{run_dir / name}: missing from the run folder")
    labels = artifacts.read_labels(run_dir / "labels.txt")
    dataset = _read_json(run_dir / "dataset.json")
    try:
        h, w, c = (int(v) for v in dataset["input_shape"])
        color = dataset.get("color_mode") or ("grayscale" if c == 1 else "rgb")
        contract = InputContract(height=h, width=w, channels=c, color_mode=color)
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportError(f"{run_dir / 'dataset.json'}: bad input_shape/color_mode: {exc}") from exc
    names = dataset.get("class_names")
    if names is not None and list(names) != labels:
        raise ExportError(f"{run_dir / 'labels.txt'}: differs from dataset.json class_names")
    return RunFolder(
        path=run_dir,
        labels=labels,
        contract=contract,
        config=_read_json(run_dir / "config.json"),
        dataset=dataset,
        backbone=_read_json(run_dir / "backbone.json"),
        metrics=_read_json(run_dir / "metrics.json"),
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path}: does not parse: {exc}") from exc
    if not isinstance(data, dict):
        raise ExportError(f"{path}: expected a JSON object")
    return data


def _load_model(run: RunFolder) -> Any:
    """Load ``model.keras`` and check it takes the contract's shape and outputs one prob/label."""
    import keras

    path = run.path / "model.keras"
    model = keras.models.load_model(path, compile=False)
    got_in = tuple(model.input_shape[1:])
    if got_in != run.contract.shape:
        raise ExportError(f"{path}: input shape {got_in} != dataset.json {run.contract.shape}")
    got_out = model.output_shape[-1]
    if got_out != len(run.labels):
        raise ExportError(f"{path}: {got_out} outputs but labels.txt has {len(run.labels)}")
    return model


# ---------------------------------------------------------------------------------------------
# SavedModel


def write_saved_model(model: Any, path: Path, contract: InputContract) -> None:
    """A SavedModel whose ``serving_default`` calls the model with ``training=False``.

    Keras' ``model.export`` keeps augmentation layers active (docs/GUIDE facts); an explicit
    inference-mode endpoint makes the exported graph deterministic whatever layers a model has.
    """
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serving_default",
        fn=lambda images: {OUTPUT_NAME: model(images, training=False)},
        input_signature=[tf.TensorSpec((None, *contract.shape), tf.float32, name=INPUT_NAME)],
    )
    archive.write_out(str(path), verbose=False)


# ---------------------------------------------------------------------------------------------
# LiteRT


def convert_tflite(
    saved_model: Path, precision: str, calibration: np.ndarray | None = None
) -> tuple[bytes, FormatEntry]:
    """Convert the SavedModel to LiteRT with built-in operators only.

    int8 is full-integer quantization calibrated on ``calibration`` (representative training
    images). Its input is ``uint8``: raw pixels are already 0..255, so an app feeds the decoded
    image as is. Its output stays ``float32`` probabilities (one dequantize op), so every
    ``.tflite`` is read the same way.

    Returns:
        The flatbuffer and a FormatEntry (path left empty) with the tensor types it takes.
    """
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), ["serving_default"])
    # Built-ins only: Flex (SELECT_TF_OPS) would need the TensorFlow runtime on the phone.
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if precision == "float16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
        if calibration is None or not len(calibration):
            raise ExportError("int8 export needs calibration images (calibration.npz)")
        images = calibration.astype(np.float32)
        # An all-black and an all-white image pin the input range to the contract's 0..255,
        # so the uint8 input has scale 1 and zero point 0: raw pixels go in unchanged.
        extremes = np.stack([np.zeros_like(images[0]), np.full_like(images[0], 255.0)])

        def representative() -> Iterator[list[np.ndarray]]:
            for image in np.concatenate([extremes, images]):
                yield [image[None]]

        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.uint8
        conv.inference_output_type = tf.float32
    elif precision != "float32":
        raise ValueError(f"unknown precision {precision!r}")
    data = bytes(conv.convert())
    return data, _format_entry(data, precision)


def _format_entry(data: bytes, precision: str) -> FormatEntry:
    """Read the tensor types and quantization the interpreter really uses from the flatbuffer."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=data)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    in_scale, in_zero = inp["quantization"]
    out_scale, out_zero = out["quantization"]
    in_dtype, out_dtype = np.dtype(inp["dtype"]).name, np.dtype(out["dtype"]).name
    return FormatEntry(
        path="",
        kind="tflite",
        precision=precision,
        input_dtype=in_dtype,
        output_dtype=out_dtype,
        input_scale=float(in_scale) if in_dtype != "float32" else None,
        input_zero_point=int(in_zero) if in_dtype != "float32" else None,
        output_scale=float(out_scale) if out_dtype != "float32" else None,
        output_zero_point=int(out_zero) if out_dtype != "float32" else None,
    )


def operator_names(path_or_bytes: Path | bytes) -> list[str]:
    """Names of the operators a ``.tflite`` model uses, as the LiteRT interpreter reports them."""
    from ai_edge_litert.interpreter import Interpreter

    if isinstance(path_or_bytes, bytes):
        interp = Interpreter(model_content=path_or_bytes)
    else:
        interp = Interpreter(model_path=str(path_or_bytes))
    return sorted({str(op["op_name"]) for op in interp._get_ops_details()})


def non_builtin_operators(names: list[str]) -> list[str]:
    """Operators that are not LiteRT built-ins: Flex (TensorFlow) ops and custom ops."""
    return [n for n in names if n.startswith("Flex") or n.upper().startswith("CUSTOM")]


def check_builtin_only(path: Path) -> list[str]:
    """Fail unless every operator of ``path`` is a LiteRT built-in; returns the operator names."""
    names = operator_names(path)
    bad = non_builtin_operators(names)
    if bad:
        raise ExportError(f"{path}: uses non-built-in operators {bad}; phones cannot run Flex ops")
    return names


def embed_metadata(path: Path, labels: list[str], metadata: dict[str, Any]) -> None:
    """Append a zip with ``labels.txt`` and ``metadata.json`` to a ``.tflite`` file.

    This is how LiteRT metadata stores "associated files": the interpreter reads only the
    flatbuffer and ignores trailing bytes, while any zip reader finds the archive from the end
    of the file. Entries are stored uncompressed, as the TFLite Support library's Android
    ``MetadataExtractor`` requires. An app then needs nothing but the ``.tflite`` file.
    """
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(EMBEDDED_LABELS, "\n".join(labels) + "\n")
        zf.writestr(EMBEDDED_METADATA, json.dumps(metadata, indent=2) + "\n")


def read_embedded(path: Path) -> tuple[list[str], dict[str, Any]]:
    """Read labels and metadata back from a ``.tflite`` file (what an app does)."""
    with zipfile.ZipFile(path) as zf:
        labels = [x for x in zf.read(EMBEDDED_LABELS).decode().splitlines() if x]
        metadata = json.loads(zf.read(EMBEDDED_METADATA))
    return labels, metadata


def _check_tflite_file(path: Path, labels: list[str]) -> None:
    """After embedding: the interpreter still loads and runs it and the zip reads back."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    detail = interp.get_input_details()[0]
    interp.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
    interp.invoke()
    got, _ = read_embedded(path)
    if got != labels:
        raise ExportError(f"{path}: embedded labels do not read back")


# ---------------------------------------------------------------------------------------------
# The export


def library_versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    versions = {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    for dist in ("ai-edge-litert", "handserve"):
        try:
            versions[dist.replace("-", "_")] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist.replace("-", "_")] = "unknown"
    return versions


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
            :data:`TFLITE_FORMATS`); ``tflite_fp32`` is always built.

    Raises:
        ExportError: the run folder is incomplete, a conversion used Flex ops, or a required
            format failed parity.
        ArtifactError: the name is invalid, or the version appeared meanwhile (concurrent export).
    """
    models_dir = Path(models_dir)
    artifacts.validate_name(name)
    run = read_run(run_dir)
    model = _load_model(run)
    with artifacts.staging(models_dir, name) as tmp:
        version = artifacts.next_version(models_dir, name)
        log.info("exporting %s as %s/%d", run.path, name, version)
        _copy_run_files(run, tmp)

        write_saved_model(model, tmp / SAVED_MODEL_DIR, run.contract)
        saved = FormatEntry(path=SAVED_MODEL_DIR, kind="saved_model", precision="float32")
        formats_built: dict[str, FormatEntry] = {SAVED_MODEL_KEY: saved}
        with np.load(run.path / "calibration.npz") as cal:
            calibration = cal["x"]
        wanted = {*(formats or [f.key for f in TFLITE_FORMATS]), "tflite_fp32"}
        for spec in (f for f in TFLITE_FORMATS if f.key in wanted):
            log.info("converting %s", spec.filename)
            data, entry = convert_tflite(tmp / SAVED_MODEL_DIR, spec.precision, calibration)
            path = tmp / spec.filename
            path.write_bytes(data)
            ops = check_builtin_only(path)
            log.info("%s: %d bytes, operators %s", spec.filename, len(data), ", ".join(ops))
            entry = dataclasses.replace(entry, path=spec.filename)
            embed_metadata(path, run.labels, _embedded_metadata(name, version, run, entry))
            _check_tflite_file(path, run.labels)
            formats_built[spec.key] = entry

        evaluation: dict[str, Any] | None = None
        if verify:
            if test_data is None:
                x, y = verify_mod.load_samples(tmp)
                data_desc = "samples.npz (labelled test images from the run)"
            else:
                x, y, data_desc = test_data
            report = verify_mod.check_parity(
                tmp, formats_built, x, y, keras_model=model, data=data_desc, num_threads=num_threads
            )
            log.info("parity at export:\n%s", verify_mod.format_table(report))
            failed = {r.name: r.failures for r in report.results if r.failures}
            fatal = [f"{k}: {'; '.join(v)}" for k, v in failed.items() if k in REQUIRED_FORMATS]
            if fatal:
                raise ExportError("parity check failed: " + "; ".join(fatal))
            for key, reasons in failed.items():
                (tmp / formats_built[key].path).unlink()
                del formats_built[key]
                log.warning("%s left out of %s/%d: %s", key, name, version, "; ".join(reasons))
            by_name = {r.name: r for r in report.results}
            formats_built = {
                k: dataclasses.replace(f, metrics=by_name[k].metrics())
                for k, f in formats_built.items()
            }
            evaluation = {
                "data": data_desc,
                "images": len(x),
                "keras": by_name["keras"].metrics(),
                "left_out": dict(failed),
            }

        manifest = Manifest(
            name=name,
            version=version,
            labels=run.labels,
            input=run.contract,
            formats=formats_built,
            files=artifacts.file_entries(tmp),
            created_at=artifacts.now_iso(),
            backbone=run.backbone,
            training=run.config,
            metrics={**run.metrics, "export_evaluation": evaluation},
            library_versions=library_versions(),
        )
        artifacts.write_manifest(tmp, manifest)
        artifacts.verify_files(tmp, artifacts.read_manifest(tmp))
        return artifacts.publish(tmp, models_dir, name, version)


def _copy_run_files(run: RunFolder, dest: Path) -> None:
    for filename in ("model.keras", "labels.txt", "samples.npz"):
        shutil.copy2(run.path / filename, dest / filename)
    report = dest / "report"
    report.mkdir()
    for filename in REPORT_FILES:
        if (run.path / filename).is_file():
            shutil.copy2(run.path / filename, report / filename)
        else:
            log.warning("%s: not in the run folder; the report will lack it", filename)
    for png in sorted(run.path.glob("*.png")):
        shutil.copy2(png, report / png.name)


def _embedded_metadata(
    name: str, version: int, run: RunFolder, entry: FormatEntry
) -> dict[str, Any]:
    """What an app needs besides the labels: the input contract and tensor types of this file."""
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
            "layout": "NHWC",
            "value_range": list(contract.value_range),
            "dtype": entry.input_dtype,
            "scale": entry.input_scale,
            "zero_point": entry.input_zero_point,
            "resize": "bilinear",
            "alpha": "composite on white",
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
# CLI


def configure(parser: argparse.ArgumentParser) -> None:
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


def parse_formats(text: str) -> tuple[str, ...]:
    """``fp32,int8`` -> manifest keys; an unknown name is a ValueError naming the choices."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in FORMAT_CHOICES]
    if unknown:
        raise ValueError(
            f"--formats: unknown {', '.join(unknown)}; choose from {', '.join(FORMAT_CHOICES)}"
        )
    return tuple(FORMAT_CHOICES[n] for n in names)


def report_left_out(path: Path) -> None:
    """Say on stderr which formats an export left out and why (the version is still good)."""
    evaluation = artifacts.read_manifest(path).metrics.get("export_evaluation") or {}
    for key, reasons in (evaluation.get("left_out") or {}).items():
        sys.stderr.write(f"left out {key} (parity): {'; '.join(reasons)}\n")


def run(args: argparse.Namespace) -> int:
    try:
        test_data = None
        if args.data_dir:
            config = _read_json(Path(args.run_dir) / "config.json")
            test_data = verify_mod.load_test_split(config, args.data_dir, args.dataset)
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
        sys.stderr.write(f"export failed: {exc}\n")
        return 1
    report_left_out(path)
    sys.stdout.write(f"{path}\n")
    return 0
