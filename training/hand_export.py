"""Export a hand-feature run (:mod:`training.hand_head`) as a model version.

The same version folder as every export (:mod:`training.export`): the head as SavedModel and
LiteRT fp32, fp16 and int8 (each checked to use built-in operators only, and held to the same
parity bounds against Keras on the run's sample hands), ``model.keras``, labels, the report and
``manifest.json`` with every file's sha256. What differs is the input: the manifest's ``input``
is a :class:`handserve.artifacts.HandFeatures` (the feature kind and size, the MediaPipe hand
models with their checksums, and for the embedder kind the version's own copy of
``gesture_embedder.tflite``, checksummed like every file), and every ``.tflite`` takes
``float32 [N, size]`` features (the int8 file quantizes inside) and carries ``labels.txt`` and a
``metadata.json`` that describes that tensor, not an image.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import typing
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from handserve import artifacts, hand_features, hands
from handserve.artifacts import (
    EMBEDDED_LABELS,
    EMBEDDED_METADATA,
    FormatEntry,
    HandFeatures,
    InputContract,
    Manifest,
    read_embedded,
)
from training import formats as export_steps
from training import run_folder
from training.litert import TFLITE_FORMATS, ExportError, check_builtin_only, convert_tflite
from training.run_folder import REPORT_FILES, RunFolder, RunFolderError

log = logging.getLogger(__name__)

#: The SavedModel signature's input name of a hand head (the Keras model's input name).
INPUT_NAME = "hand_features"


def is_hand_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` is a hand-feature run (its ``dataset.json`` names ``features``)."""
    path = Path(run_dir) / run_folder.DATASET
    try:
        return "features" in json.loads(path.read_text())
    except (OSError, ValueError):
        return False


def _read(run: RunFolder) -> tuple[dict[str, Any], bytes | None]:
    missing = run.missing(run_folder.EXPORT_NEEDS)
    if missing:
        raise ExportError(f"{run.path}: not a finished run folder, missing {', '.join(missing)}")
    try:
        info = run.read_json(run_folder.DATASET)
    except RunFolderError as exc:
        raise ExportError(str(exc)) from exc
    embedder = None
    if info.get("features") == "embedder":
        path = run.path / hand_features.EMBEDDER_FILE
        if not path.is_file():
            raise ExportError(f"{path}: the run's copy of the gesture embedder is missing")
        embedder = path.read_bytes()
        if hand_features.sha256(embedder) != info.get("embedder_sha256"):
            raise ExportError(f"{path}: differs from the embedder the run was trained with")
    return info, embedder


def export_hand_run(
    run_dir: Path,
    models_dir: Path,
    name: str,
    *,
    verify: bool = True,
    num_threads: int | None = None,
    formats: tuple[str, ...] | None = None,
) -> Path:
    """Export a hand-feature run folder as the next version of ``models_dir/name``.

    Arguments and refusals as :func:`training.export.export_run` (which calls this for a hand
    run); parity is measured on the run's sample hands, as features.
    """
    import keras

    run = RunFolder(Path(run_dir))
    info, embedder = _read(run)
    kind = str(info["features"])
    labels = run.read_labels()
    model = keras.models.load_model(run.path / run_folder.MODEL, compile=False)
    size = int(model.input_shape[-1])
    if size != hand_features.FEATURE_SIZE.get(kind) or model.output_shape[-1] != len(labels):
        raise ExportError(
            f"{run.path / run_folder.MODEL}: takes {size} floats and gives "
            f"{model.output_shape[-1]} classes; {kind} features are "
            f"{hand_features.FEATURE_SIZE.get(kind)} and labels.txt has {len(labels)}"
        )
    contract = HandFeatures(
        kind=kind,
        size=size,
        hand_models=dict(hands.MODEL_SHA256),
        embedder=hand_features.EMBEDDER_FILE if embedder is not None else None,
    )
    runner = hand_features.GestureEmbedder(embedder) if embedder is not None else None

    def features(records: np.ndarray) -> np.ndarray:
        return hand_features.features(records, kind, runner)

    models_dir = Path(models_dir)
    with artifacts.staging_version(models_dir, name) as (tmp, version):
        log.info("exporting %s as %s/%d (hand features: %s)", run.path, name, version, kind)
        _copy_files(run, tmp, embedder)
        export_steps.write_saved_model(
            model, tmp / artifacts.SAVED_MODEL.path, contract, INPUT_NAME
        )
        built: dict[str, FormatEntry] = {
            artifacts.SAVED_MODEL.key: FormatEntry(
                path=artifacts.SAVED_MODEL.path,
                kind=artifacts.SAVED_MODEL.kind,
                precision=artifacts.SAVED_MODEL.precision,
                input_shape=[size],
            )
        }
        calibration = features(run.read_calibration())
        wanted = {*(formats or [f.key for f in TFLITE_FORMATS]), *export_steps.REQUIRED_FORMATS}
        for fmt in (f for f in TFLITE_FORMATS if f.key in wanted):
            data, entry = convert_tflite(
                tmp / artifacts.SAVED_MODEL.path, fmt.precision, calibration, float_input=True
            )
            path = tmp / fmt.path
            path.write_bytes(data)
            ops = check_builtin_only(path)
            log.info("%s: %d bytes, operators %s", fmt.path, len(data), ", ".join(ops))
            entry = dataclasses.replace(entry, path=fmt.path)
            _embed(path, labels, _metadata(name, version, contract, entry, len(labels)))
            built[fmt.key] = entry
        evaluation = None
        if verify:
            with np.load(tmp / artifacts.SAMPLES) as samples:
                x, y = features(np.asarray(samples["x"])), np.asarray(samples["y"])
            built, evaluation = export_steps.keep_what_passes(
                tmp,
                built,
                model,
                (x, y, f"samples.npz ({len(y)} held-out hands, as {kind} features)"),
                num_threads,
                f"{name}/{version}",
            )
        manifest = Manifest(
            name=name,
            version=version,
            labels=labels,
            input=typing.cast(InputContract, contract),  # see artifacts.Manifest.input
            formats=built,
            files=artifacts.file_entries(tmp),
            created_at=artifacts.now_iso(),
            backbone=run.read_backbone(),
            training=run.read_config(),
            metrics={**run.read_metrics(), "export_evaluation": evaluation},
            library_versions=run_folder.environment(),
        )
        artifacts.write_manifest(tmp, manifest)
        artifacts.verify_files(tmp, artifacts.read_manifest(tmp))
        return artifacts.publish(tmp, models_dir, name, version)


def _copy_files(run: RunFolder, dest: Path, embedder: bytes | None) -> None:
    for filename in (run_folder.MODEL, run_folder.LABELS, run_folder.SAMPLES):
        shutil.copy2(run.path / filename, dest / filename)
    if embedder is not None:
        (dest / hand_features.EMBEDDER_FILE).write_bytes(embedder)
    report = dest / artifacts.REPORT_DIR
    report.mkdir()
    for filename in REPORT_FILES:
        if (run.path / filename).is_file():
            shutil.copy2(run.path / filename, report / filename)
    for png in sorted(run.path.glob("*.png")):
        shutil.copy2(png, report / png.name)


def _metadata(
    name: str, version: int, contract: HandFeatures, entry: FormatEntry, num_classes: int
) -> dict[str, Any]:
    """What an app needs besides the labels: the feature tensor this file takes."""
    return {
        "name": name,
        "version": version,
        "precision": entry.precision,
        "input": {
            "type": "hand_features",
            "kind": contract.kind,
            "tensor_shape": entry.input_shape,
            "dtype": entry.input_dtype,
            "computed_by": "handserve.hand_features.features (docs/training.md, 'Hand features')",
            "from": "MediaPipe HandLandmarker: image landmarks, world landmarks, handedness",
            "embedder": contract.embedder,
        },
        "output": {
            "dtype": entry.output_dtype,
            "meaning": "softmax probabilities, index order = labels.txt",
        },
        "num_classes": num_classes,
    }


def _embed(path: Path, labels: list[str], metadata: dict[str, Any]) -> None:
    """Append ``labels.txt`` and ``metadata.json`` as a zip (as every export's ``.tflite``
    carries them; no TFLite Metadata flatbuffer, whose schema describes image inputs), then
    check the file still runs and the labels read back."""
    from ai_edge_litert.interpreter import Interpreter

    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(EMBEDDED_LABELS, "\n".join(labels) + "\n")
        zf.writestr(EMBEDDED_METADATA, json.dumps(metadata, indent=2) + "\n")
    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    detail = interp.get_input_details()[0]
    interp.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
    interp.invoke()
    if read_embedded(path)[0] != labels:
        raise ExportError(f"{path}: embedded labels do not read back")
