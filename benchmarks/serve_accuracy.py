"""Accuracy of an exported version as served: every photo of a class-folder test set, over HTTP.

    python benchmarks/serve_accuracy.py --models-dir models --model fruits \\
        --data-dir ../shared/data/fruits/valid

Starts ``bentoml serve service.service:HandServe`` on the models folder (or uses ``--url``),
POSTs every image file under ``--data-dir/<class>/`` as it is on disk (JPEG, PNG: the server
decodes and resizes, as it would for a user) to ``/predict_batch`` in chunks, and prints
accuracy and per-class recall next to the val and test accuracy the version's manifest
recorded (Keras on the run's own decoded images). Served on the folder the run used as its
val or test split, the two should agree: a gap means the server's decoding or resizing
differs from training's, or the served ``model.tflite`` from the Keras model. Exits 1 when
a request fails or a class folder is not one of the model's labels.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import requests

from handserve import artifacts
from handserve.images import IMAGE_EXTENSIONS
from service.local_server import background_server, wait_ready

REPO = Path(__file__).resolve().parents[1]


def test_files(data_dir: Path) -> list[tuple[Path, str]]:
    """``(file, class)`` for every image under ``data_dir/<class>/``, sorted."""
    return [
        (path, class_dir.name)
        for class_dir in sorted(p for p in data_dir.iterdir() if p.is_dir())
        for path in sorted(class_dir.iterdir())
        if path.suffix.lower() in IMAGE_EXTENSIONS
    ]


def classify(url: str, model: str, files: list[Path], chunk: int) -> list[str]:
    """The top label the server gives each file, in order."""
    labels: list[str] = []
    for start in range(0, len(files), chunk):
        part = files[start : start + chunk]
        upload = [("images", (p.name, p.read_bytes())) for p in part]
        response = requests.post(
            url + "/predict_batch", data={"model": model, "top_k": "1"}, files=upload, timeout=120
        )
        if response.status_code != 200:
            raise RuntimeError(f"{part[0]}..: HTTP {response.status_code}: {response.text[:300]}")
        labels += [r["predictions"][0]["label"] for r in response.json()["results"]]
    return labels


def report(truth: list[str], predicted: list[str], recorded: Any, served: dict[str, Any]) -> str:
    correct = sum(t == p for t, p in zip(truth, predicted, strict=True))
    lines = [
        f"model {served['name']} version {served['version']}: {len(truth)} images",
        "",
        "| class | images | recall (served) |",
        "|---|---|---|",
    ]
    for label in sorted(set(truth)):
        pairs = [(t, p) for t, p in zip(truth, predicted, strict=True) if t == label]
        hits = sum(t == p for t, p in pairs)
        lines.append(f"| {label} | {len(pairs)} | {hits / len(pairs):.4f} |")
    lines += [
        "",
        f"served accuracy: {correct / len(truth):.4f} ({len(truth) - correct} wrong)",
        f"recorded by the run (Keras, its own decoded images): {recorded or 'nothing'}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--model", required=True, help="model name under --models-dir")
    parser.add_argument("--data-dir", type=Path, required=True, help="folder of class folders")
    parser.add_argument("--url", default=None, help="use a running server instead")
    parser.add_argument("--chunk", type=int, default=16, help="images per /predict_batch")
    args = parser.parse_args(argv)

    files = test_files(args.data_dir)
    if not files:
        print(f"{args.data_dir}: no image files in class folders", file=sys.stderr)
        return 1
    manifest = artifacts.read_manifest(artifacts.version_dir(args.models_dir, args.model))
    unknown = sorted({c for _, c in files} - set(manifest.labels))
    if unknown:
        print(f"{args.data_dir}: classes {unknown} are not labels of {args.model}", file=sys.stderr)
        return 1
    recorded = ", ".join(
        f"{split} {manifest.metrics[split]['accuracy']:.4f}"
        for split in ("val", "test")
        if (manifest.metrics.get(split) or {}).get("accuracy") is not None
    )
    served_format = manifest.formats.get(artifacts.TFLITE_FP32.key)
    if served_format and "accuracy" in served_format.metrics:
        recorded += f" (model.tflite on test: {served_format.metrics['accuracy']:.4f})"

    def run(url: str, proc: subprocess.Popen[bytes] | None = None) -> int:
        if proc is not None:  # a server we started: wait until it has loaded and warmed up
            wait_ready(url, proc, timeout=180)
        served = requests.get(url + "/models", timeout=10).json()
        entry = next(m for m in served["models"] if m["name"] == args.model)
        predicted = classify(url, args.model, [p for p, _ in files], args.chunk)
        truth = [c for _, c in files]
        print(report(truth, predicted, recorded, entry))
        return 0

    if args.url:
        return run(args.url.rstrip("/"))
    log_path = Path(tempfile.gettempdir()) / "serve_accuracy.log"
    with background_server(args.models_dir, log_path) as (url, proc):
        return run(url, proc)


if __name__ == "__main__":
    sys.exit(main())
