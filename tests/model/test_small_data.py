"""Issue 10 on tiny data: a 150-image folder trains well by default, the numbers say which split
chose the model, ``handserve evaluate`` scores whole folders, and the CLI is quiet."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from handserve_cli import main
from tests.conftest import REPO
from training import train
from training.config import TrainConfig

pytestmark = pytest.mark.slow

CLASSES = ("rows", "columns", "dots")


def _pattern(kind: str, rng: np.random.Generator) -> np.ndarray:
    """A 24x24 grey picture of stripes or dots at a random phase, with noise."""
    yy, xx = np.mgrid[0:24, 0:24]
    phase = rng.integers(0, 4)
    if kind == "rows":
        ink = (yy + phase) % 6 < 3
    elif kind == "columns":
        ink = (xx + phase) % 6 < 3
    else:
        ink = ((yy + phase) % 6 < 2) & ((xx + phase) % 6 < 2)
    img = np.where(ink, 200.0, 40.0) + rng.normal(0, 25, (24, 24))
    return np.clip(img, 0, 255).astype(np.uint8)


def _write_folder(root: Path, per_class: int, seed: int, classes=CLASSES) -> Path:
    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(_pattern(name, rng)).save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> train.TrainResult:
    """150 images in 3 class folders, no test/: the from-scratch CNN with default stopping."""
    root = _write_folder(tmp_path_factory.mktemp("small") / "patterns", 50, seed=1)
    cfg = TrainConfig(
        dataset="folder",
        data_dir=str(root),
        image_size=24,
        color_mode="grayscale",
        backbone="cnn",
        weights="none",
        epochs=40,
        batch_size=16,
        runs_dir=str(root.parent / "runs"),
        run_name="small",
    )
    return train.train(cfg)


def test_small_folder_early_stops_sensibly_and_beats_chance(small_run: train.TrainResult) -> None:
    """8 steps an epoch: early stopping acts (no 500-step floor) and keeps a trained model."""
    metrics = small_run.metrics
    history = json.loads((small_run.run_dir / "history.json").read_text())["epochs"]
    assert len(history) < 40  # stopped early, inside phase 1
    assert metrics["best_epoch"] > 1  # not the untrained first epoch
    assert metrics["val"]["accuracy"] >= 0.8
    assert metrics["test"]["accuracy"] >= 0.6  # chance is 1/3


def test_folder_without_test_holds_out_a_test_split_and_says_so(
    small_run: train.TrainResult,
) -> None:
    metrics = small_run.metrics
    dataset = json.loads((small_run.run_dir / "dataset.json").read_text())
    assert dataset["sizes"]["test"] == 15  # 10% of 150, stratified
    assert metrics["per_class"]["split"] == "test"
    assert metrics["splits"] == {
        "checkpoint_chosen_on": "val",
        "held_out": "test",
        "test_origin": "10% of patterns/, held out",
    }


def test_evaluate_scores_a_whole_folder_with_some_classes(
    small_run: train.TrainResult, tmp_path: Path, capsys
) -> None:
    subset = _write_folder(tmp_path / "two", 7, seed=9, classes=("dots", "rows"))
    out = tmp_path / "report.json"
    argv = ["evaluate", str(small_run.run_dir), "--dataset", "folder", "--data-dir", str(subset)]
    assert main([*argv, "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    classes = {c["label"]: c for c in report["per_class"]["classes"]}
    assert [c["label"] for c in report["per_class"]["classes"]] == sorted(CLASSES)
    assert classes["dots"]["support"] == 7 and classes["rows"]["support"] == 7
    assert classes["columns"]["support"] == 0
    assert report["per_class"]["split"] == str(subset)
    assert report["test"]["accuracy"] >= 0.6
    assert "macro F1" in capsys.readouterr().out


def test_evaluate_prefers_test_and_names_unknown_classes(
    small_run: train.TrainResult, tmp_path: Path, capsys
) -> None:
    root = tmp_path / "split"
    _write_folder(root / "test", 3, seed=4)
    _write_folder(root / "train", 2, seed=5)
    argv = ["evaluate", str(small_run.run_dir), "--dataset", "folder", "--data-dir"]
    out = tmp_path / "r.json"
    assert main([*argv, str(root), "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["per_class"]["split"] == str(root / "test")
    assert sum(c["support"] for c in report["per_class"]["classes"]) == 9
    shutil.copytree(root / "test" / "dots", root / "test" / "stars")
    assert main([*argv, str(root)]) == 2
    assert "stars" in capsys.readouterr().err


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(
        [sys.executable, "-m", "handserve_cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env=env,
    )


#: A line of TensorFlow's C++ logging (absl): "I0000 00:00:... port.cc:153] oneDNN ...".
_ABSL_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d", re.MULTILINE)


def test_cli_prints_one_line_per_epoch_and_no_tensorflow_banner(tmp_path: Path) -> None:
    args = ["train", "--backbone", "dense", "--limit", "120", "--epochs", "2"]
    proc = _cli(*args, "--early-stopping", "0", "--runs-dir", str(tmp_path), "--no-checkpoint")
    assert proc.returncode == 0, proc.stderr
    assert not _ABSL_LINE.search(proc.stderr), proc.stderr
    assert "oneDNN" not in proc.stderr and "cuda" not in proc.stderr.lower()
    assert len(re.findall(r"epoch \d+ \(phase 1\)", proc.stderr)) == 2  # ours, once each
    assert "Epoch 1/2" not in proc.stderr + proc.stdout  # not Keras' as well
    assert proc.stdout.startswith("run: ")


def test_verbose_cli_shows_tensorflow_logging() -> None:
    quiet, loud = _cli("train", "--list-backbones"), _cli("-v", "train", "--list-backbones")
    assert quiet.returncode == loud.returncode == 0
    assert not _ABSL_LINE.search(quiet.stderr)
    assert _ABSL_LINE.search(loud.stderr), loud.stderr
