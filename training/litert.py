"""LiteRT (``.tflite``) files from a SavedModel: conversion, operator check, embedded metadata.

:mod:`training.export` converts each precision of :data:`TFLITE_FORMATS`, refuses any file that
needs operators a phone's LiteRT runtime lacks, and writes TFLite Metadata (for task libraries)
and the labels and input contract into it. The files of a grayscale model take RGB and compute
the luma in their graph, because task libraries feed RGB frames.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from handserve import artifacts
from handserve.adapters import litert as litert_internals
from handserve.artifacts import EMBEDDED_LABELS, EMBEDDED_METADATA, FormatEntry, read_embedded
from training import tflite_metadata
from training.tflite_metadata import ImageModelInfo, build_metadata

#: Files of the zip archive appended to every ``.tflite`` (see docs/mobile.md).


class ExportError(Exception):
    """A run folder that cannot be exported, or a conversion that failed a check."""


#: The LiteRT files, in the order they are converted: the ``tflite`` rows of the model folder's
#: format table (:data:`handserve.artifacts.FORMATS`).
TFLITE_FORMATS = tuple(f for f in artifacts.FORMATS.values() if f.kind == "tflite")


def convert_tflite(
    saved_model: Path,
    precision: str,
    calibration: np.ndarray | None = None,
    *,
    rgb: bool = False,
    float_input: bool = False,
) -> tuple[bytes, FormatEntry]:
    """Convert the SavedModel to LiteRT with built-in operators only.

    int8 is full-integer quantization calibrated on ``calibration`` (representative training
    images). Its input is ``uint8``: raw pixels are already 0..255, so an app feeds the decoded
    image as is. Its output stays ``float32`` probabilities (one dequantize op), so every
    ``.tflite`` is read the same way.

    Args:
        rgb: ``saved_model`` is a grayscale model's RGB entry point
            (:func:`write_rgb_saved_model`): the grey calibration images go in as RGB.
        float_input: the input is not pixels (a hand head's features): the int8 file takes
            float32 and quantizes inside, calibrated on ``calibration`` alone.

    Returns:
        The flatbuffer and a FormatEntry (path left empty) with the tensor types and the input
        shape it takes.
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
        if rgb:
            images = np.repeat(images, 3, axis=-1)  # grey as RGB: the luma gives it back
        if not float_input:
            # An all-black and an all-white image pin the input range to the contract's
            # 0..255, so the uint8 input has scale 1 and zero point 0: raw pixels go in as is.
            extremes = np.stack([np.zeros_like(images[0]), np.full_like(images[0], 255.0)])
            images = np.concatenate([extremes, images])

        def representative() -> Iterator[list[np.ndarray]]:
            for image in images:
                yield [image[None]]

        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.float32 if float_input else tf.uint8
        conv.inference_output_type = tf.float32
    elif precision != "float32":
        raise ValueError(f"unknown precision {precision!r}")
    data = bytes(conv.convert())
    return data, _format_entry(data, precision)


#: ITU-R 601 luma as Pillow computes it for ``convert("L")``, in 16-bit fixed point:
#: ``L = (19595 R + 38470 G + 7471 B + 32768) >> 16``.
LUMA_WEIGHTS = (19595, 38470, 7471)


def write_rgb_saved_model(model: Any, path: Path, *, exact: bool = True) -> None:
    """A SavedModel taking RGB images ``(N, H, W, 3)`` 0..255 for a grayscale Keras ``model``.

    Its ``serving_default`` computes the luma, then calls the model with ``training=False``.
    ``exact``: the luma exactly as Pillow rounds it (every intermediate is an integer below
    2**24, which float32 holds exactly), so a phone's RGB frame gives the answer the server
    gives for the same image. The int8 file cannot run FLOOR in integer arithmetic, so it takes
    the unrounded weighted sum (its parity rule is accuracy, not bit equality).
    """
    import keras
    import tensorflow as tf

    h, w, _ = (int(d) for d in model.input_shape[1:])
    # Each weight as 256 * high + low with both below 2048, so the constants survive the
    # float16 file's conversion of every constant to float16 exactly (19595 would become 19600).
    high = tf.constant([wt // 256 for wt in LUMA_WEIGHTS], tf.float32)
    low = tf.constant([wt % 256 for wt in LUMA_WEIGHTS], tf.float32)

    fractions = tf.constant([wt / 65536 for wt in LUMA_WEIGHTS], tf.float32)

    def serve(images: Any) -> Any:
        if exact:
            weighted = 256.0 * tf.reduce_sum(images * high, -1, keepdims=True) + tf.reduce_sum(
                images * low, -1, keepdims=True
            )
            luma = tf.floor((weighted + 32768.0) / 65536.0)
        else:  # one weighted sum, which integer kernels quantize well
            luma = tf.reduce_sum(images * fractions, -1, keepdims=True)
        return {"probabilities": model(luma, training=False)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serving_default",
        fn=serve,
        input_signature=[tf.TensorSpec((None, h, w, 3), tf.float32, name="images")],
    )
    archive.write_out(str(path), verbose=False)


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
        input_shape=[int(d) for d in inp["shape"][1:]],
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
    return litert_internals.operator_names(interp)


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


def embed_metadata(
    path: Path, labels: list[str], metadata: dict[str, Any], info: ImageModelInfo
) -> None:
    """Put TFLite Metadata into a ``.tflite`` file and append ``labels.txt`` and ``metadata.json``.

    The ``TFLITE_METADATA`` buffer (:mod:`training.tflite_metadata`) is what task libraries
    read (an RGB image input, its normalization, the labels file of the output); the files are
    "associated files" in a zip appended to the flatbuffer: the interpreter reads only the
    flatbuffer and ignores trailing bytes, while any zip reader finds the archive from the end
    of the file. Entries are stored uncompressed, as the TFLite Support library's Android
    ``MetadataExtractor`` requires. An app then needs nothing but the ``.tflite`` file.
    """
    path.write_bytes(tflite_metadata.populate(path.read_bytes(), build_metadata(info)))
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(EMBEDDED_LABELS, "\n".join(labels) + "\n")
        zf.writestr(EMBEDDED_METADATA, json.dumps(metadata, indent=2) + "\n")


def check_tflite_file(path: Path, labels: list[str]) -> None:
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
    problems = tflite_metadata.metadata_problems(path, labels)
    if problems:
        raise ExportError(f"{path}: TFLite Metadata: {'; '.join(problems)}")
