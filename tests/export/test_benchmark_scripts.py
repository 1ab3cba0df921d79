"""The training and export benchmarks run as a user runs them (``python benchmarks/NAME.py``)
on a tiny fake MNIST for one epoch, so that a crash on what a fresh clone installs fails CI.
Their accuracy and speed targets are for the real data (docs/training.md, docs/artifacts.md)
and are not judged here; what must hold is that they train, export, verify and print.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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


def run_benchmark(script: str, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert "Traceback" not in done.stderr, done.stderr[-4000:]
    return done


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
