"""Classify images with MediaPipe Tasks' ImageClassifier from a ``.tflite`` file alone.

    .cache/venv-mediapipe/bin/python scripts/mediapipe_classify.py MODEL.tflite IMAGE...

Run by tests/export/test_mobile_task_library.py and benchmarks/mobile_parity.py in MediaPipe's
own virtualenv (its numpy and protobuf pins clash with TensorFlow's), so it imports nothing from
handserve: what an app does with the file, through the same C++ core as Android, iOS and the
web. Prints one JSON list per
image of ``{"index", "score", "label"}``, best first; a model the library refuses exits 1 with
the library's message.
"""

import json
import sys

import mediapipe as mp
from mediapipe.tasks.python import vision
from mediapipe.tasks.python.core.base_options import BaseOptions


def main(model: str, images: list[str]) -> int:
    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=model))
    try:
        classifier = vision.ImageClassifier.create_from_options(options)
    except Exception as exc:  # whatever the library raises, its message is the answer
        print(f"MediaPipe refused {model}: {exc}", file=sys.stderr)
        return 1
    with classifier:
        out = []
        for path in images:
            result = classifier.classify(mp.Image.create_from_file(path))
            categories = result.classifications[0].categories
            out.append(
                [{"index": c.index, "score": c.score, "label": c.category_name} for c in categories]
            )
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
