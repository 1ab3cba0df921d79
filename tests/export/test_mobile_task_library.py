"""Every exported ``.tflite`` opens in MediaPipe Tasks' ImageClassifier from the file alone (its
TFLite Metadata says what the input is and where the labels are) and gives the server's answer.

MediaPipe (``.cache/venv-mediapipe``, installed by ``scripts/install-test-tools.sh`` from the
pinned ``requirements/mediapipe.txt``) is the C++ core Android, iOS and web apps use. Both sides
get the same RGB PNG at the model's input size (MediaPipe resizes and ignores EXIF and alpha on
its own, so other sizes would compare resizers, not models): a grayscale model (the digits) and
an RGB one, each of its three files, against ``/predict`` of the service (in-process) serving
that same file.
"""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from handserve import artifacts
from service.config import ServiceConfig
from tests.conftest import REPO
from tests.export.handmade import make_run, synthetic_images
from tests.service.helpers import inprocess_client
from training import tflite_metadata
from training.export import export_run

pytestmark = pytest.mark.slow

#: Largest |score difference| allowed between MediaPipe and the server on the same file and
#: image, by precision. float32: the same tensor through the same file; only the runtimes
#: differ (MediaPipe bundles its own LiteRT build). float16: MediaPipe's XNNPACK evaluates the
#: float16 weights in its own way (measured up to 2e-5 here). int8: a grayscale model's int8
#: file computes a quantized, unrounded luma (FLOOR has no integer kernel) where the server's
#: decoder rounds Pillow's; on colour input that moves outputs by a few 1/256 steps (up to
#: 0.09 measured on tinted MNIST with the digits model, docs/mobile.md).
TOLERANCE = {"float32": 1e-5, "float16": 1e-3, "int8": 0.15}
MEDIAPIPE = REPO / ".cache" / "venv-mediapipe" / "bin" / "python"
SCRIPT = REPO / "scripts" / "mediapipe_classify.py"
if not MEDIAPIPE.exists():
    pytest.skip(
        "MediaPipe is not installed in .cache/venv-mediapipe (scripts/install-test-tools.sh "
        "could not install requirements/mediapipe.txt)",
        allow_module_level=True,
    )


def png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8), mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def coloured_digits(n: int, size: int) -> list[bytes]:
    """Real handwritten digits at ``size`` px, in colour (R, G and B differ, so the luma the
    file computes must match the one the server's decoder computes)."""
    from sklearn.datasets import load_digits

    out = []
    for i, pixels in enumerate(load_digits().images[:n]):
        grey = Image.fromarray((pixels * (255 / 16)).astype(np.uint8), mode="L")
        v = np.asarray(grey.resize((size, size), Image.Resampling.BILINEAR), np.float64)
        tint = [(1.0, 0.55, 0.25), (0.3, 0.9, 0.6), (0.7, 0.4, 1.0)][i % 3]
        rgb = np.stack([np.clip(v * t + 20 * k, 0, 255) for k, t in enumerate(tint)], -1)
        out.append(png(rgb))
    return out


@pytest.fixture(scope="module")
def rgb_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rgb")
    run = make_run(root / "run", shape=(16, 16, 3), classes=3)
    return export_run(run, root / "models", "bands")


def mediapipe(model: Path, images: list[Path]) -> list[list[dict]]:
    done = subprocess.run(
        [str(MEDIAPIPE), str(SCRIPT), str(model), *map(str, images)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def served(version: Path, file: str, images: list[bytes]) -> list[list[dict]]:
    """``/predict`` of the service serving ``file`` of ``version``, every class ranked."""
    manifest = artifacts.read_manifest(version)
    cfg = ServiceConfig(models_dir=str(version.parent.parent), runtime="litert", litert_file=file)
    with inprocess_client(cfg) as (client, _):
        answers = []
        for data in images:
            r = client.post(
                f"/predict?model={manifest.name}&top_k={manifest.num_classes}",
                files={"image": ("x.png", data, "image/png")},
            )
            assert r.status_code == 200, r.text
            answers.append(r.json()["predictions"])
    return answers


def check_file(version: Path, file: str, images: list[bytes], tmp_path: Path) -> None:
    manifest = artifacts.read_manifest(version)
    paths = []
    for i, data in enumerate(images):
        paths.append(tmp_path / f"{file}-{i}.png")
        paths[-1].write_bytes(data)
    assert tflite_metadata.metadata_problems(version / file, manifest.labels) == []
    phone = mediapipe(version / file, paths)
    server = served(version, file, images)
    precision = next(f.precision for f in manifest.formats.values() if f.path == file)
    for got, want in zip(phone, server, strict=True):
        # the labels come from the file's metadata, in the manifest's index order
        assert {c["index"]: c["label"] for c in got} == dict(enumerate(manifest.labels))
        by_index = {c["index"]: c["score"] for c in got}
        scores = np.array([by_index[p["index"]] for p in want])
        expected = np.array([p["score"] for p in want])
        tolerance = TOLERANCE[precision]
        assert np.abs(scores - expected).max() <= tolerance, (file, scores, expected)
        if expected[0] - expected[1] > 2 * tolerance:  # not a near tie: the same best class
            assert got[0]["index"] == want[0]["index"], (file, got[0], want[0])
    same = sum(g[0]["index"] == w[0]["index"] for g, w in zip(phone, server, strict=True))
    assert same >= 0.9 * len(server), (file, same)


@pytest.mark.parametrize("file", [f.path for f in artifacts.FORMATS.values() if f.kind == "tflite"])
def test_grayscale_model_files_open_in_mediapipe_and_agree_with_the_server(
    tiny_export: Path, file: str, tmp_path: Path
) -> None:
    manifest = artifacts.read_manifest(tiny_export)
    entry = next(f for f in manifest.formats.values() if f.path == file)
    assert manifest.input.channels == 1 and entry.input_shape == [28, 28, 3]
    check_file(tiny_export, file, coloured_digits(12, 28), tmp_path)


@pytest.mark.parametrize("file", [f.path for f in artifacts.FORMATS.values() if f.kind == "tflite"])
def test_rgb_model_files_open_in_mediapipe_and_agree_with_the_server(
    rgb_export: Path, file: str, tmp_path: Path
) -> None:
    x, _ = synthetic_images(12, (16, 16, 3), 3, seed=5)
    check_file(rgb_export, file, [png(image) for image in x], tmp_path)


def test_a_file_without_metadata_is_refused_by_mediapipe_and_reported(
    tiny_export: Path, tmp_path: Path
) -> None:
    """What every export was before: the library refuses it, and verify's check says why."""
    bare = tmp_path / "bare.tflite"
    data = (tiny_export / "model.tflite").read_bytes()
    import flatbuffers
    from tensorflow.lite.python import schema_py_generated as schema

    tree = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    tree.metadata = [m for m in tree.metadata or [] if m.name != b"TFLITE_METADATA"]
    builder = flatbuffers.Builder(len(data))
    builder.Finish(tree.Pack(builder), b"TFL3")
    bare.write_bytes(bytes(builder.Output()))
    done = subprocess.run(
        [str(MEDIAPIPE), str(SCRIPT), str(bare), str(tmp_path / "none.png")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and "MediaPipe refused" in done.stderr
    labels = artifacts.read_manifest(tiny_export).labels
    problems = tflite_metadata.metadata_problems(bare, labels)
    assert problems and "no TFLITE_METADATA" in problems[0]
