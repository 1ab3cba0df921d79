"""MediaPipe Tasks' ImageClassifier against the server, on every ``.tflite`` of a version.

    python benchmarks/mobile_parity.py --models-dir models --model fruits \\
        --data-dir ../shared/data/fruits/valid

Every image under ``--data-dir/<class>/`` is decoded as the server decodes it (EXIF, alpha on
white) and resized to the model's input size in RGB, then classified twice from the same PNG:
by MediaPipe (``.cache/venv-mediapipe``, ``scripts/mediapipe_classify.py``: the file alone,
its TFLite Metadata saying how to feed it, as an Android, iOS or web app does) and by the
server's own path (``handserve.images.decode_image`` and the LiteRT runtime running that same
file). Prints, per file, the accuracy of each, their top-1 agreement and the largest score
difference. Pre-resizing keeps MediaPipe's own resizer out of the comparison. A benchmark,
not a test: it needs MediaPipe's environment (``make test`` installs it) and real photos.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.serve_accuracy import test_files  # noqa: E402
from handserve import artifacts  # noqa: E402
from handserve.images import ImageSpec, decode_image  # noqa: E402
from handserve.runtimes import LiteRTRuntime, open_runtime  # noqa: E402

MEDIAPIPE = REPO / ".cache" / "venv-mediapipe" / "bin" / "python"
SCRIPT = REPO / "scripts" / "mediapipe_classify.py"
#: Per-channel factors of --tint.
TINTS = np.array([(1.0, 0.55, 0.25), (0.3, 0.9, 0.6), (0.7, 0.4, 1.0)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--model", required=True)
    parser.add_argument("--data-dir", type=Path, required=True, help="folder of class folders")
    parser.add_argument("--limit", type=int, default=None, help="at most this many images")
    parser.add_argument(
        "--tint",
        action="store_true",
        help="colour each image (R, G and B differ), so a grayscale model's in-graph luma and "
        "the server's decoder must agree on real colour input",
    )
    args = parser.parse_args()
    if not MEDIAPIPE.exists():
        print(f"no MediaPipe environment at {MEDIAPIPE}: run scripts/install-test-tools.sh")
        return 2
    version = artifacts.version_dir(args.models_dir, args.model)
    manifest = artifacts.load_verified(version)
    files = test_files(args.data_dir)[: args.limit]
    truth = np.array([manifest.labels.index(c) for _, c in files])
    h, w = manifest.input.height, manifest.input.width
    print(f"{manifest.name}/{manifest.version}: {len(files)} images from {args.data_dir}")
    tinted = ", tinted" if args.tint else ""
    print(f"input {manifest.input.shape} ({manifest.input.color_mode}); PNGs {w}x{h} RGB{tinted}\n")
    print("| file | precision | input | MediaPipe acc | server acc | top-1 agree | max abs dp |")
    print("|---|---|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        pngs, paths = [], []
        for i, (path, _) in enumerate(files):
            rgb = decode_image(path.read_bytes(), ImageSpec(h, w, 3))
            if args.tint:
                rgb = np.clip(rgb * TINTS[i % len(TINTS)], 0, 255).astype(np.uint8)
            out = Path(tmp) / f"{i}.png"
            Image.fromarray(rgb, mode="RGB").save(out)
            pngs.append(out.read_bytes())
            paths.append(str(out))
        pixels = np.stack([decode_image(data, manifest.input.image_spec) for data in pngs])
        for entry in (e for e in manifest.formats.values() if e.kind == "tflite"):
            runtime = open_runtime(
                version, manifest, runtime=LiteRTRuntime.name, litert_file=entry.path
            )
            server = runtime.predict(pixels)
            done = subprocess.run(
                [str(MEDIAPIPE), str(SCRIPT), str(version / entry.path), *paths],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode:
                print(f"| {entry.path} | {entry.precision} | refused: {done.stderr.strip()} |")
                continue
            phone = np.zeros_like(server)
            for row, categories in enumerate(json.loads(done.stdout)):
                for c in categories:
                    phone[row, c["index"]] = c["score"]
            agree = float(np.mean(phone.argmax(1) == server.argmax(1)))
            phone_acc = np.mean(phone.argmax(1) == truth)
            server_acc = np.mean(server.argmax(1) == truth)
            print(
                f"| {entry.path} | {entry.precision} | {entry.input_shape} | {phone_acc:.4f} "
                f"| {server_acc:.4f} | {agree:.4f} | {np.abs(phone - server).max():.2g} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
