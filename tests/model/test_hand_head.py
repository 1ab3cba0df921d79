"""The hand-feature backbones end to end on synthetic hands: ``handserve train --backbone
hand_landmarks`` over several folders writes the run folder every run writes, learns hands it
has not seen, and refuses what it cannot use (training.hand_head, training.train)."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from handserve import hand_features as hf
from handserve_cli import main
from training import train
from training.config import TrainConfig
from training.model import ModelError

from ..unit.test_hand_features import SHAPE, a_hand

pytestmark = pytest.mark.slow

#: One hand shape per class: the same base hand with a different finger folded.
CLASS_SHAPES = {}
for label, finger in zip("ABC", (8, 12, 20), strict=True):
    shape = SHAPE.copy()
    shape[finger - 1 : finger + 1] = shape[finger - 3] + [0.0, 0.3, -0.3]
    CLASS_SHAPES[label] = shape


def fake_record(path: Path) -> np.ndarray | None:
    """A hand of the photo's class, somewhere in the photo, either hand; none in C's first."""
    if path.stem in ("0", "three_0") and path.parent.name == "C":
        return None
    rng = np.random.default_rng(zlib.crc32(str(path).encode()))
    rec = a_hand(
        cx=rng.uniform(0.3, 0.7),
        cy=rng.uniform(0.3, 0.7),
        size=rng.uniform(0.05, 0.2),
        shape=CLASS_SHAPES[path.parent.name] + rng.normal(0, 0.03, SHAPE.shape),
    )
    if rng.random() < 0.5:  # a left hand
        image, world, handedness, size = hf.unpack(rec)
        image[0, :, 0] = 1 - image[0, :, 0]
        world[0, :, 0] *= -1
        rec = hf.pack(image[0], world[0], 1 - float(handedness[0]), *size[0])
    return rec


def fake_signers(
    root: Path, monkeypatch: pytest.MonkeyPatch, cache: Path, per_class: int = 15
) -> Path:
    """``root/<source>/<letter>/N.jpg`` for two sources of the letters A-C, whose hands are
    :func:`fake_record`'s (the detector stubbed out, the record cache in ``cache``)."""
    from training.data import hands as hd

    for label in "ABC":
        for source in ("one", "two"):
            for n in range(per_class):
                path = root / source / label / f"{n}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(f"{source}{label}{n}".encode())
    monkeypatch.setattr(hd, "CACHE_DIR", cache)
    monkeypatch.setattr(hd, "_record_of", fake_record)
    monkeypatch.setattr(hd.hands, "check_models", lambda: None)
    return root


@pytest.fixture
def sign_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """Two sources of signers and a third folder of photos (``three_N``), all fake hands."""
    first = fake_signers(tmp_path / "signers", monkeypatch, tmp_path / "cache")
    second = tmp_path / "photos"
    for label in "ABC":
        for n in range(5):
            path = second / label / f"three_{n}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(f"three{label}{n}".encode())
    return first, second


def test_a_hand_run_over_two_folders_writes_the_report_of_every_run(
    sign_folders: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = sign_folders
    code = main(
        [
            "train",
            "--config",
            str(Path(__file__).resolve().parents[2] / "configs" / "asl_photos.yaml"),
            "--data-dir",
            str(first),
            "--extra-data-dirs",
            str(second),
            "--epochs",
            "15",
            "--early-stopping",
            "0",
            "--runs-dir",
            str(tmp_path / "runs"),
            "--run-name",
            "hands",
        ]
    )
    assert code == 0, capsys.readouterr().err
    run = tmp_path / "runs" / "hands"
    for name in train.RUN_FILES:
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.9  # hands it never saw, anywhere, either hand
    assert metrics["no_hand"] == 3  # C's first photo in each of the three sources
    assert [c["label"] for c in metrics["per_class"]["classes"]] == ["A", "B", "C"]
    info = json.loads((run / "dataset.json").read_text())
    assert info["features"] == "landmarks" and info["input_shape"] == [126]
    assert info["groups"] == ["one", "three", "two"]
    assert sum(info["sizes"].values()) == 3 * 35 - 3
    history = json.loads((run / "history.json").read_text())["epochs"]
    assert history[0]["loss"] > history[-1]["loss"]


def test_the_loss_falls_and_the_model_reads_records(sign_folders: tuple[Path, Path]) -> None:
    from training import hand_head
    from training.data import hands as hd

    cfg = TrainConfig.load(flags={"backbone": "hand_landmarks", "epochs": 3, "hand_copies": 2})
    dataset = hd.load_hand_dataset(sign_folders, val_fraction=0.2, test_fraction=0.0, seed=1)
    model, records = hand_head.fit_head(cfg, dataset, embedder=None)
    assert records[-1]["loss"] < records[0]["loss"]
    probs = model.predict_on_batch(dataset.val.x)
    assert probs.shape == (len(dataset.val), 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_augmented_copies_are_reproducible_and_keep_their_labels() -> None:
    from training import hand_head

    x = np.stack([a_hand(), a_hand(cx=0.2)])
    y = np.asarray([0, 1])
    ax, ay = hand_head.augmented(x, y, copies=3, seed=7)
    bx, _ = hand_head.augmented(x, y, copies=3, seed=7)
    assert ax.shape == (8, hf.RECORD_SIZE) and ay.tolist() == [0, 1] * 4
    np.testing.assert_array_equal(ax, bx)
    np.testing.assert_array_equal(ax[:2], x)


def test_the_embedder_kind_needs_its_model(tmp_path: Path) -> None:
    from training import hand_head

    cfg = TrainConfig.load(flags={"backbone": "hand_embedder"})
    with pytest.raises(ModelError, match="needs --weights FILE"):
        hand_head.embedder_bytes(cfg)
    cfg = TrainConfig.load(flags={"backbone": "hand_embedder", "weights": str(tmp_path / "x")})
    with pytest.raises(ModelError, match="gesture embedder not found"):
        hand_head.embedder_bytes(cfg)


def test_hand_backbones_read_photo_folders_only(tmp_path: Path) -> None:
    cfg = TrainConfig.load(
        flags={"backbone": "hand_landmarks", "dataset": "digits", "runs_dir": str(tmp_path)}
    )
    with pytest.raises(ValueError, match="use --dataset folder"):
        train.train(cfg)
    assert not any(tmp_path.iterdir())  # no run folder, not even a partial one
