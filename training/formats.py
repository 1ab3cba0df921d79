"""Steps every export runs whatever its model takes (images or hand features): the SavedModel
with an inference-mode endpoint, and the parity check that keeps the formats that pass.

:mod:`training.export` (image models) and :mod:`training.hand_export` (hand-feature heads) both
build on these, so neither imports the other.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from handserve import artifacts
from handserve.artifacts import FormatEntry, HandFeatures, InputContract
from training import verify as verify_mod
from training.litert import ExportError

log = logging.getLogger("training.export")

#: Formats a version cannot be published without: what the service runs (``model.tflite`` on
#: CPU, the SavedModel on GPU). Any other format that misses its parity bound is left out.
REQUIRED_FORMATS = tuple(k for k, f in artifacts.FORMATS.items() if f.required)
#: Name of the SavedModel signature's input and output tensors.
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"


def write_saved_model(
    model: Any, path: Path, contract: InputContract | HandFeatures, input_name: str = INPUT_NAME
) -> None:
    """A SavedModel whose ``serving_default`` calls the model with ``training=False``.

    Keras' ``model.export`` keeps augmentation layers active (docs/artifacts.md); an explicit
    inference-mode endpoint makes the exported graph deterministic whatever layers a model has.
    """
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serving_default",
        fn=lambda images: {OUTPUT_NAME: model(images, training=False)},
        input_signature=[tf.TensorSpec((None, *contract.shape), tf.float32, name=input_name)],
    )
    archive.write_out(str(path), verbose=False)


def keep_what_passes(
    tmp: Path,
    built: dict[str, FormatEntry],
    model: Any,
    test_data: tuple[np.ndarray, np.ndarray, str] | None,
    num_threads: int | None,
    where: str,
) -> tuple[dict[str, FormatEntry], dict[str, Any]]:
    """Parity of every format; drop those that fail, or raise if a served one does.

    Returns the kept formats, each with its measured metrics, and ``export_evaluation``.
    """
    if test_data is None:
        x, y = verify_mod.load_samples(tmp)
        data_desc = "samples.npz (labelled test images from the run)"
    else:
        x, y, data_desc = test_data
    report = verify_mod.check_parity(
        tmp, built, x, y, keras_model=model, data=data_desc, num_threads=num_threads
    )
    log.info("parity at export:\n%s", verify_mod.format_table(report))
    failed = {r.name: r.failures for r in report.results if r.failures}
    fatal = [f"{k}: {'; '.join(v)}" for k, v in failed.items() if k in REQUIRED_FORMATS]
    if fatal:
        raise ExportError("parity check failed: " + "; ".join(fatal))
    for key, reasons in failed.items():
        (tmp / built[key].path).unlink()
        log.warning("%s left out of %s: %s", key, where, "; ".join(reasons))
    by_name = {r.name: r for r in report.results}
    kept = {
        k: dataclasses.replace(f, metrics=by_name[k].metrics())
        for k, f in built.items()
        if k not in failed
    }
    evaluation = {
        "data": data_desc,
        "images": len(x),
        "keras": by_name["keras"].metrics(),
        "left_out": dict(failed),
    }
    return kept, evaluation
