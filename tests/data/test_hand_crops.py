"""``--crop-hands``: folder images cropped to the hand before training, photos without a hand
reported and kept whole or skipped, and the crop recorded as the run's input contract.

A stand-in detector (the bright square of each synthetic image is its "hand") makes these run
without MediaPipe's model files; tests/unit/test_hands.py tests the real detector.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from handserve import hands
from handserve.configs import ConfigError
from training.config import TrainConfig
from training.data import load_dataset
from training.data.base import DataError
from training.data.folder import load_folder
from training.run_folder import DatasetInfo


class BrightDetector:
    """The bounding box of the bright pixels is the hand; no bright pixel, no hand."""

    def hands(self, img: Image.Image) -> list[hands.Hand]:
        grey = np.asarray(img.convert("L"))
        ys, xs = np.nonzero(grey > 128)
        if len(xs) == 0:
            return []
        box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
        return [hands.Hand(box, np.zeros((21, 2), np.float32))]


@pytest.fixture
def fake_detector(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hands, "detector", BrightDetector)
    monkeypatch.setattr(hands, "models_available", lambda source=None: True)


def _photo(path: Path, square: tuple[int, int] | None) -> None:
    """A 240x200 dark photo with a 40-px bright square (the hand) at ``square``."""
    img = Image.new("RGB", (240, 200), (20, 20, 20))
    if square is not None:
        x, y = square
        img.paste((250, 250, 250), (x, y, x + 40, y + 40))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


@pytest.fixture
def hand_folder(tmp_path: Path) -> Path:
    root = tmp_path / "signs"
    for cls, spots in {"a": [(10, 10), (150, 20), (60, 120)], "b": [(90, 90), (180, 140)]}.items():
        for i, spot in enumerate(spots):
            _photo(root / cls / f"{i}.png", spot)
    _photo(root / "b" / "empty.png", None)
    return root


def test_cropped_images_show_the_hand_and_whole_ones_mostly_room(hand_folder, fake_detector):
    whole = load_folder(hand_folder, 32, "rgb", val_fraction=0.0)
    cropped = load_folder(hand_folder, 32, "rgb", val_fraction=0.0, crop="hand")
    assert cropped.crop == "hand" and whole.crop is None
    # the hand (40 px of 240) is a small part of the photo, and most of its crop (40 of 56 px)
    bright = (cropped.train.x.mean(axis=(1, 2, 3)) > 128).sum()
    assert bright == 5  # the five photos with a hand
    assert (whole.train.x.mean(axis=(1, 2, 3)) < 60).all()


def test_photos_without_a_hand_are_reported_and_kept_whole_or_skipped(
    hand_folder, fake_detector, caplog
):
    kept = load_folder(hand_folder, 32, "rgb", val_fraction=0.0, crop="hand", no_hand="keep")
    assert len(kept.train.y) == 6
    assert [Path(p).name for p in kept.no_hand] == ["empty.png"]
    assert "no hand found in 1 of the images" in caplog.text and "kept whole" in caplog.text
    skipped = load_folder(hand_folder, 32, "rgb", val_fraction=0.0, crop="hand", no_hand="skip")
    assert len(skipped.train.y) == 5
    assert [Path(p).name for p in skipped.no_hand] == ["empty.png"]


def test_a_class_with_no_hand_at_all_cannot_be_skipped_away(tmp_path, fake_detector):
    root = tmp_path / "signs"
    _photo(root / "a" / "0.png", (10, 10))
    _photo(root / "b" / "0.png", None)
    with pytest.raises(DataError, match="no readable images"):
        load_folder(root, 32, "rgb", val_fraction=0.0, crop="hand", no_hand="skip")


def test_cropping_without_the_models_fails_before_decoding(hand_folder, monkeypatch, tmp_path):
    monkeypatch.setenv(hands.MODELS_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="fetch-hand-models"):
        load_folder(hand_folder, 32, "rgb", crop="hand")


def test_the_crop_is_the_dataset_and_run_contract(hand_folder, fake_detector) -> None:
    cfg = TrainConfig(
        dataset="folder",
        data_dir=str(hand_folder),
        image_size=32,
        crop_hands=True,
        val_fraction=0.2,
    )
    dataset = load_dataset(cfg)
    info = DatasetInfo.of(dataset)
    assert info.contract.crop == "hand"
    again = DatasetInfo.from_json(info.to_json(), Path("dataset.json"))
    assert again.contract.crop == "hand" and again.no_hand == info.no_hand


def test_sign_mnist_carries_the_crop_by_default_and_other_datasets_do_not() -> None:
    assert TrainConfig(dataset="sign_mnist").hand_crop == "hand"
    assert TrainConfig(dataset="sign_mnist", crop_hands=False).hand_crop is None
    assert TrainConfig(dataset="folder").hand_crop is None
    assert TrainConfig(dataset="folder", crop_hands=True).hand_crop == "hand"
    assert TrainConfig(dataset="digits").hand_crop is None


def test_crop_hands_on_digits_is_refused_naming_the_flag() -> None:
    with pytest.raises(ConfigError, match="--crop-hands"):
        TrainConfig.load(flags={"dataset": "mnist", "crop_hands": True})


def test_evaluation_crops_as_the_model_was_trained(tmp_path: Path) -> None:
    """``handserve evaluate`` takes its folder defaults from the model's dataset.json."""
    from training.run_folder import RunFolder, data_defaults

    info = DatasetInfo("signs", "x", ["a", "b"], (32, 32, 3), crop="hand")
    RunFolder(tmp_path).write_dataset(info)
    assert data_defaults(tmp_path) == {"image_size": 32, "color_mode": "rgb", "crop_hands": True}
    RunFolder(tmp_path).write_dataset(DatasetInfo("d", "x", ["a", "b"], (28, 28, 1)))
    assert data_defaults(tmp_path)["crop_hands"] is False


def test_the_flags_reach_the_config() -> None:
    import argparse

    from training.cli import configure_train

    parser = argparse.ArgumentParser()
    configure_train(parser)
    args = parser.parse_args(["--dataset", "folder", "--crop-hands", "--no-hand", "skip"])
    cfg = TrainConfig.load(flags=TrainConfig.flags_given(args))
    assert (cfg.hand_crop, cfg.no_hand) == ("hand", "skip")
    args = parser.parse_args(["--dataset", "sign_mnist", "--no-crop-hands"])
    assert TrainConfig.load(flags=TrainConfig.flags_given(args)).hand_crop is None
