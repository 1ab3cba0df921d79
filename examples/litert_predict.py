"""Classify images with nothing but an exported ``.tflite`` file and the LiteRT interpreter.

    python examples/litert_predict.py models/digits/1/model.tflite examples/images/digit_7.png

What a phone app does, in Python: read the labels and input contract that travel inside the
``.tflite`` file (:func:`handserve.artifacts.read_embedded`: a zip archive appended to the
flatbuffer), decode each image the way the model
was trained (EXIF orientation, alpha on white, colour mode, bilinear resize), and run it on
:class:`handserve.runtimes.LiteRTRuntime` (the same runner the server uses), which feeds raw
0..255 pixels as the file's input type (quantized for the int8 model) and returns
probabilities in label order. No TensorFlow is imported.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from handserve.artifacts import read_embedded
from handserve.images import ImageSpec, decode_image
from handserve.ranking import top_k
from handserve.runtimes import LiteRTRuntime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a .tflite file from models/NAME/VERSION/")
    parser.add_argument("images", type=Path, nargs="+", help="image files (PNG, JPEG, ...)")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--num-threads", type=int, default=None)
    args = parser.parse_args(argv)

    labels, meta = read_embedded(args.model)
    inp = meta["input"]
    spec = ImageSpec(inp["height"], inp["width"], inp["channels"])
    batch = np.stack([decode_image(p.read_bytes(), spec) for p in args.images])
    probs = LiteRTRuntime(args.model, num_threads=args.num_threads).predict(batch)

    print(f"{meta['name']} v{meta['version']} ({meta['precision']}), {len(labels)} classes")
    for path, row in zip(args.images, probs, strict=True):
        ranked = ", ".join(f"{c['label']} {c['score']:.3f}" for c in top_k(row, labels, args.top_k))
        print(f"{path}: {ranked}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
