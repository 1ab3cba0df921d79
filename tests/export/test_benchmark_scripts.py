"""The training and export benchmarks run as a user runs them (``python benchmarks/NAME.py``)
on a tiny fake MNIST for one epoch, so that a crash on what a fresh clone installs fails CI.
Their accuracy and speed targets are for the real data (docs/training.md, docs/artifacts.md)
and are not judged here; what must hold is that they train, export, verify and print.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from handserve import artifacts
from tests.bench_scripts import run_benchmark
from tests.conftest import REPO
from tests.data.conftest import fake_mnist_arrays, write_idx

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fake_shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stand-in for ``../shared``: ``data/mnist`` with 120 training and 40 test images."""
    shared = tmp_path_factory.mktemp("shared")
    mnist = shared / "data" / "mnist"
    mnist.mkdir(parents=True)
    data = fake_mnist_arrays(120, 40)
    write_idx(mnist / "train-images-idx3-ubyte.gz", data["x_train"])
    write_idx(mnist / "train-labels-idx1-ubyte.gz", data["y_train"])
    write_idx(mnist / "t10k-images-idx3-ubyte.gz", data["x_test"])
    write_idx(mnist / "t10k-labels-idx1-ubyte.gz", data["y_test"])
    return shared


def test_train_bench_trains_and_records_its_row(fake_shared: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    done = run_benchmark(
        "train_bench.py",
        *("mnist", "--shared", str(fake_shared), "--runs-dir", str(runs)),
        *("--epochs", "1", "--batch-size", "32"),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (row,) = [json.loads(line) for line in (runs / "results.jsonl").read_text().splitlines()]
    assert row["benchmark"] == "mnist" and row["epochs"] == 1
    assert 0.0 <= row["test_accuracy"] <= 1.0
    assert row["config"]["data_dir"] == str(fake_shared / "data" / "mnist")
    assert Path(row["run"]).is_dir()
    assert f"| mnist | {row['test_accuracy']:.4f}" in done.stdout


def test_export_parity_trains_exports_and_verifies_every_format(
    fake_shared: Path, tmp_path: Path
) -> None:
    done = run_benchmark(
        "export_parity.py",
        *("--data-root", str(fake_shared / "data"), "--datasets", "mnist"),
        *("--epochs", "1", "--limit", "120", "--speed-seconds", "0.1"),
        *("--work-dir", str(tmp_path)),
    )
    # 1 is a missed target, which a one-epoch model on noise may well miss; anything else broke
    assert done.returncode in (0, 1), done.stdout[-3000:] + done.stderr[-3000:]
    assert "all targets met:" in done.stdout, done.stdout[-3000:]
    table = {line.split()[0]: line.split() for line in done.stdout.splitlines() if line.strip()}
    for fmt in ("keras", "saved_model", "tflite_fp32", "tflite_fp16", "tflite_int8"):
        assert fmt in table and table[fmt][-1] == "ok", (fmt, done.stdout[-3000:])
    assert "on 40 images" in done.stdout  # the whole (fake) test split was run through each
    assert (tmp_path / "models" / "mnist" / "1" / "manifest.json").is_file()


@pytest.fixture
def digit_folder(tiny_export: Path, tmp_path: Path) -> Path:
    """Two class folders named by the tiny model's labels, two digit PNGs each."""
    from tests.service.helpers import digit_png

    labels = artifacts.read_manifest(tiny_export).labels
    for seed, label in enumerate(labels[:2]):
        (tmp_path / "photos" / label).mkdir(parents=True)
        for k in range(2):
            (tmp_path / "photos" / label / f"{k}.png").write_bytes(digit_png(seed * 2 + k))
    return tmp_path / "photos"


def test_phone_photos_compares_the_decoders_on_blown_up_photos(
    tiny_export: Path, digit_folder: Path
) -> None:
    models = tiny_export.parent.parent
    done = run_benchmark(
        "phone_photos.py",
        *("--models-dir", str(models), "--model", "tiny", "--data-dir", str(digit_folder)),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "4 synthetic 4032x3024 JPEGs" in done.stdout
    rows = [line for line in done.stdout.splitlines() if line.startswith(("| before", "| now"))]
    assert len(rows) == 2, done.stdout
    assert "photos change top-1 between before and now" in done.stdout


def test_mobile_parity_compares_mediapipe_with_the_server(
    tiny_export: Path, digit_folder: Path
) -> None:
    if not (REPO / ".cache" / "venv-mediapipe" / "bin" / "python").exists():
        pytest.skip("MediaPipe is not installed in .cache/venv-mediapipe")
    models = tiny_export.parent.parent
    done = run_benchmark(
        "mobile_parity.py",
        *("--models-dir", str(models), "--model", "tiny", "--data-dir", str(digit_folder)),
        "--tint",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line.split("|") for line in done.stdout.splitlines() if ".tflite |" in line]
    assert len(rows) == 3, done.stdout  # every file opened by MediaPipe, none refused
    for row in rows:
        assert float(row[6]) >= 0.5, row  # top-1 agreement with the server's path


def test_every_benchmark_script_has_a_smoke_test() -> None:
    """A new script in benchmarks/ must be run here or in tests/service/ (a crash on what a
    fresh clone installs then fails CI, as benchmarks/reliability.py's once did)."""
    tested = (
        Path(__file__).read_text()
        + (REPO / "tests/service/test_benchmark_scripts.py").read_text()
        + (REPO / "tests/unit/test_peers.py").read_text()  # the peer benchmark's pieces
    )
    scripts = sorted(p.name for p in (REPO / "benchmarks").glob("*.py"))
    assert [s for s in scripts if f'"{s}"' not in tested] == []


@pytest.fixture(scope="module")
def source_photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<LABEL>/<source>_<n>.png`` as in ../shared/data/asl_photos: labels 0-2 (the tiny
    model's), two sources, noise photos (no hand in them)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("photos") / "signs"
    rng = np.random.default_rng(0)
    for label in "012":
        (root / label).mkdir(parents=True)
        for source in ("alpha", "beta"):
            for n in (1, 2, 3):
                pixels = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / label / f"{source}_{n}.png")
    return root


def test_hand_crops_detects_classifies_and_holds_each_source_out(
    source_photos: Path, tiny_export: Path, tmp_path: Path
) -> None:
    from handserve import hands

    if not hands.models_available():
        pytest.skip("MediaPipe's hand models are not fetched (scripts/fetch-hand-models.sh)")
    photos = ("--photos", str(source_photos))
    done = run_benchmark("hand_crops.py", "detect", *photos)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| alpha | 9 | 0 (0.0%) |" in done.stdout and "| all | 18 |" in done.stdout

    models = tiny_export.parent.parent
    done = run_benchmark(
        "hand_crops.py", "classify", *photos, "--models-dir", str(models), "--model", "tiny"
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| beta | 9 |")]
    assert len(rows) == 1 and rows[0].endswith("| 0/9 (0.0%) | 0/9 (0.0%) |"), done.stdout

    done = run_benchmark("hand_crops.py", "landmarks", *photos)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| alpha | 9 |" in done.stdout and "| mean over sources |" in done.stdout

    settings = {"backbone": "cnn", "weights": "none", "image_size": 28, "epochs": 1}
    done = run_benchmark(
        "hand_crops.py",
        "loso",
        *photos,
        "--settings",
        json.dumps(settings),
        "--work-dir",
        str(tmp_path),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    held = [line.split("|")[1].strip() for line in done.stdout.splitlines() if "| 9 |" in line]
    assert held == ["alpha", "beta"], done.stdout
    assert "| mean over sources |" in done.stdout


def test_hand_features_holds_each_group_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """benchmarks/"hand_features.py" in-process, on synthetic hands (a stand-in for the
    detector, whose real photos are in ../shared): every group held out once, a mean row, the
    photos without a hand counted, the confusions listed."""
    import importlib.util
    import sys

    from tests.model.test_hand_head import fake_signers

    first = fake_signers(tmp_path / "signers", monkeypatch, tmp_path / "cache", per_class=12)
    spec = importlib.util.spec_from_file_location(
        "hand_features_bench", REPO / "benchmarks" / "hand_features.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    settings = '{"epochs": 2, "hand_copies": 1}'
    argv = ["hand_features.py", "logo", "--data-dir", str(first), "--kinds", "landmarks"]
    monkeypatch.setattr(sys, "argv", [*argv, "--settings", settings])
    assert bench.main() == 0
    out = capsys.readouterr().out
    held = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ")]
    assert held[1:] == ["one", "two", "mean over groups"], out
    assert "| one | 35 | 1 |" in out and "confusions (landmarks" in out
