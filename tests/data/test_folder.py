"""Image-folder datasets: both layouts, every image kind, the shared preprocessing, bad input."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from handserve.images import ImageSpec, decode_image
from tests.data.conftest import write_image
from training.config import TrainConfig
from training.data import DataError, load_dataset, load_folder


@pytest.mark.parametrize(("color_mode", "channels"), [("rgb", 3), ("grayscale", 1)])
def test_flat_layout_every_format_and_mode(make_folder, color_mode: str, channels: int) -> None:
    root = make_folder(per_class=8)  # 24 images covering PNG/JPEG/GIF/BMP/WebP, RGB/L/RGBA/P
    ds = load_folder(root, 16, color_mode, val_fraction=0.25, seed=0)
    assert ds.name == "pets" and ds.source == str(root)
    assert ds.class_names == ["cat", "dog", "fox"]
    assert ds.input_shape == (16, 16, channels)
    assert (len(ds.train), len(ds.val), ds.test) == (18, 6, None)
    assert ds.skipped == 0
    assert ds.train.x.dtype == np.uint8 and ds.train.y.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(ds.val.y), [2, 2, 2])


def test_uses_the_shared_preprocessing(make_folder) -> None:
    root = make_folder(classes=("a", "b"), per_class=4)
    ds = load_folder(root, 20, "rgb", val_fraction=0.0)
    paths = sorted((root / "a").iterdir()) + sorted((root / "b").iterdir())
    spec = ImageSpec(20, 20, 3)
    expected = np.stack([decode_image(p.read_bytes(), spec) for p in paths])
    np.testing.assert_array_equal(ds.train.x, expected)
    np.testing.assert_array_equal(ds.train.y, [0, 0, 0, 0, 1, 1, 1, 1])


def test_test_fraction_holds_out_a_test_split(make_folder) -> None:
    root = make_folder(per_class=10)
    ds = load_folder(root, 8, "rgb", val_fraction=0.2, test_fraction=0.1, seed=5)
    assert ds.test is not None
    assert (len(ds.test), len(ds.val), len(ds.train)) == (3, 5, 22)
    again = load_folder(root, 8, "rgb", val_fraction=0.2, test_fraction=0.1, seed=5)
    assert again.test is not None
    np.testing.assert_array_equal(again.test.x, ds.test.x)
    np.testing.assert_array_equal(again.val.x, ds.val.x)


@pytest.mark.parametrize("val_name", ["valid", "val", "validation"])
def test_split_layout(make_folder, val_name: str) -> None:
    root = make_folder(splits={"train": 3, val_name: 2, "test": 1})
    ds = load_folder(root, 12, "grayscale", val_fraction=0.5)
    assert ds.class_names == ["cat", "dog", "fox"]
    assert ds.test is not None
    assert (len(ds.train), len(ds.val), len(ds.test)) == (9, 6, 3)
    np.testing.assert_array_equal(ds.test.y, [0, 1, 2])


def test_split_layout_without_valid_holds_out_from_train(make_folder) -> None:
    root = make_folder(splits={"train": 4})
    ds = load_folder(root, 8, "rgb", val_fraction=0.25, test_fraction=0.0)
    assert (len(ds.train), len(ds.val), ds.test) == (9, 3, None)


def test_limit_applies_before_decoding(make_folder) -> None:
    root = make_folder(per_class=6)
    ds = load_folder(root, 8, "rgb", val_fraction=0.25, limit=8, seed=1)
    assert len(ds.train) + len(ds.val) == 8
    assert set(np.unique(ds.train.y)) == {0, 1, 2}


def test_mismatched_class_sets(make_folder) -> None:
    root = make_folder(splits={"train": 2, "valid": 1})
    write_image(root / "valid" / "emu" / "x.png", "PNG", "RGB", (8, 8))
    with pytest.raises(
        DataError, match=r"valid must have the same class folders .*extra \['emu'\]"
    ):
        load_folder(root, 8, "rgb")


def test_corrupt_image_skipped_and_counted(make_folder, caplog) -> None:
    root = make_folder(per_class=4)
    bad = root / "dog" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with caplog.at_level(logging.WARNING, logger="training.data"):
        ds = load_folder(root, 8, "rgb", val_fraction=0.0)
    assert ds.skipped == 1
    assert len(ds.train) == 12
    assert str(bad) in caplog.text
    assert "skipped 1 corrupt images" in caplog.text


def test_class_with_only_corrupt_images(make_folder) -> None:
    root = make_folder(classes=("a", "b", "c"), per_class=2)
    for path in (root / "b").iterdir():
        path.write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"class folder .*b has no readable images"):
        load_folder(root, 8, "rgb", val_fraction=0.0)


def test_empty_class_folder(make_folder) -> None:
    root = make_folder(per_class=2)
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"class folder .*empty has no images"):
        load_folder(root, 8, "rgb")


def test_single_class(make_folder) -> None:
    root = make_folder(classes=("only",), per_class=3)
    with pytest.raises(DataError, match="needs at least 2 classes"):
        load_folder(root, 8, "rgb")


def test_missing_root_names_it_and_the_flag(tmp_path) -> None:
    missing = tmp_path / "photos"
    with pytest.raises(DataError, match=rf"{missing}.*--data-dir"):
        load_folder(missing, 8, "rgb")


def test_ignores_other_files_and_hidden_folders(make_folder) -> None:
    root = make_folder(classes=("a", "b"), per_class=2)
    (root / "a" / "labels.csv").write_text("x")
    (root / ".cache").mkdir()
    ds = load_folder(root, 8, "rgb", val_fraction=0.0)
    assert ds.class_names == ["a", "b"] and len(ds.train) == 4


def test_a_folder_without_test_gets_a_held_out_test_split_by_default(make_folder) -> None:
    """The report must have a number the checkpoint was not chosen on (issue 10)."""
    root = make_folder(per_class=10)
    ds = load_dataset(TrainConfig(dataset="folder", data_dir=str(root), image_size=8))
    assert ds.test is not None and len(ds.test) == 3
    assert set(np.unique(ds.test.y)) == {0, 1, 2}
    assert ds.test_origin == "10% of pets/, held out"
    split = make_folder(splits={"train": 4, "valid": 1, "test": 1}, name="split")
    cfg = TrainConfig(dataset="folder", data_dir=str(split), image_size=8)
    assert load_dataset(cfg).test_origin == "test/ folder"
    none = TrainConfig(dataset="folder", data_dir=str(root), image_size=8, test_fraction=0.0)
    assert load_dataset(none).test is None
