"""Classify images with nothing but an exported ``.tflite`` file and the LiteRT interpreter.

    python examples/litert_predict.py models/digits/1/model.tflite examples/images/digit_7.png

What a phone app does, in Python: read the labels and input contract that travel inside the
``.tflite`` file (a zip archive appended to the flatbuffer), decode each image the way the model
was trained (EXIF orientation, alpha on white, colour mode, bilinear resize), feed float32 raw
0..255 pixels (or uint8 for the int8 model), and read softmax probabilities in label order.
No TensorFlow is imported.
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from handserve.images import ImageSpec, decode_image


def read_embedded(model_path: Path) -> tuple[list[str], dict]:
    """Labels and metadata from the zip archive appended to the ``.tflite`` file."""
    with zipfile.ZipFile(model_path) as zf:
        labels = [line for line in zf.read("labels.txt").decode().splitlines() if line]
        metadata = json.loads(zf.read("metadata.json"))
    return labels, metadata


def to_input(pixels: np.ndarray, inp: dict) -> np.ndarray:
    """Raw 0..255 pixels to the input tensor type the file declares."""
    if inp["dtype"] == "float32":
        return pixels.astype(np.float32)
    scale, zero = inp.get("scale") or 1.0, inp.get("zero_point") or 0
    info = np.iinfo(np.dtype(inp["dtype"]))
    q = np.round(pixels.astype(np.float32) / scale + zero)
    return np.clip(q, info.min, info.max).astype(inp["dtype"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a .tflite file from models/NAME/VERSION/")
    parser.add_argument("images", type=Path, nargs="+", help="image files (PNG, JPEG, ...)")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--num-threads", type=int, default=None)
    args = parser.parse_args(argv)

    labels, meta = read_embedded(args.model)
    inp, out = meta["input"], meta["output"]
    spec = ImageSpec(inp["height"], inp["width"], inp["channels"])
    batch = np.stack([decode_image(p.read_bytes(), spec) for p in args.images])

    interpreter = Interpreter(model_path=str(args.model), num_threads=args.num_threads)
    in_detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(in_detail["index"], list(batch.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(in_detail["index"], to_input(batch, inp))
    interpreter.invoke()
    probs = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    if out["dtype"] != "float32":  # an integer output: dequantize with the file's parameters
        probs = (probs.astype(np.float32) - out["zero_point"]) * out["scale"]

    print(f"{meta['name']} v{meta['version']} ({meta['precision']}), {len(labels)} classes")
    for path, row in zip(args.images, probs, strict=True):
        top = np.argsort(row)[::-1][: args.top_k]
        ranked = ", ".join(f"{labels[i]} {row[i]:.3f}" for i in top)
        print(f"{path}: {ranked}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
