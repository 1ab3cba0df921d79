"""The embedded digits, load_dataset's dispatch, and the seeded stratified splits and limit."""

from __future__ import annotations

import numpy as np
import pytest

from training.config import TrainConfig
from training.data import DataError, Dataset, Split, load_dataset, load_digits


def _ids(split: Split) -> set[bytes]:
    """Images as hashable bytes, to compare splits by content."""
    return {img.tobytes() for img in split.x}


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits(val_fraction=0.1, seed=42)


def test_digits_shapes_classes_and_polarity(digits: Dataset) -> None:
    assert digits.name == "digits"
    assert digits.class_names == [str(d) for d in range(10)]
    assert digits.input_shape == (28, 28, 1)
    assert digits.num_classes == 10
    assert digits.source == "embedded (scikit-learn load_digits)"
    assert digits.test is not None
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797
    assert len(digits.test) == pytest.approx(0.2 * 1797, abs=1)
    assert len(digits.val) == pytest.approx(0.1 * (1797 - len(digits.test)), abs=1)
    for split in (digits.train, digits.val, digits.test):
        assert split.x.dtype == np.uint8 and split.y.dtype == np.int64
        assert set(np.unique(split.y)) == set(range(10))
    # Full 0..255 range, ink high and background low (MNIST polarity): corners are background.
    assert digits.train.x.max() == 255
    assert digits.train.x[:, 0, 0, 0].mean() < 20
    assert digits.train.x[:, 10:18, 10:18, 0].mean() > digits.train.x[:, :3, :3, 0].mean() + 50


def test_digits_splits_are_disjoint_and_stratified(digits: Dataset) -> None:
    assert digits.test is not None
    train, val, test = _ids(digits.train), _ids(digits.val), _ids(digits.test)
    assert not train & val and not train & test and not val & test
    shares = np.bincount(digits.test.y, minlength=10) / len(digits.test)
    np.testing.assert_allclose(shares, 0.1, atol=0.02)


def test_digits_seed_reproducible_and_changes_split(digits: Dataset) -> None:
    again = load_digits(val_fraction=0.1, seed=42)
    np.testing.assert_array_equal(again.train.x, digits.train.x)
    np.testing.assert_array_equal(again.val.y, digits.val.y)
    other = load_digits(val_fraction=0.1, seed=7)
    assert _ids(other.val) != _ids(digits.val)


def test_val_fraction_does_not_move_the_test_split(digits: Dataset) -> None:
    other = load_digits(val_fraction=0.3, seed=42)
    assert other.test is not None and digits.test is not None
    np.testing.assert_array_equal(other.test.x, digits.test.x)
    assert len(other.val) > len(digits.val)


def test_limit_caps_training_pool_stratified() -> None:
    small = load_digits(val_fraction=0.2, seed=1, limit=50)
    assert len(small.train) + len(small.val) == 50
    assert len(small.val) == 10
    assert set(np.unique(small.train.y)) == set(range(10))
    assert small.test is not None and len(small.test) == pytest.approx(359, abs=1)


def test_zero_val_fraction_gives_empty_val() -> None:
    ds = load_digits(val_fraction=0.0, seed=1, limit=30)
    assert len(ds.train) == 30
    assert ds.val.x.shape == (0, 28, 28, 1)


def test_load_dataset_dispatches_on_config(make_mnist) -> None:
    ds = load_dataset(TrainConfig(limit=20))
    assert ds.name == "digits" and len(ds.train) + len(ds.val) == 20
    ds = load_dataset(TrainConfig(dataset="mnist", data_dir=str(make_mnist("raw")), seed=3))
    assert ds.name == "mnist" and len(ds.train) == 54 and len(ds.val) == 6


@pytest.mark.parametrize("dataset", ["sign_mnist", "folder"])
def test_load_dataset_without_data_dir_names_the_flag(dataset: str) -> None:
    with pytest.raises(DataError, match="--data-dir"):
        load_dataset(TrainConfig(dataset=dataset))  # type: ignore[arg-type]


def test_split_rejects_mismatched_arrays() -> None:
    with pytest.raises(ValueError):
        Split(np.zeros((3, 4, 4, 1), np.uint8), np.zeros(2, np.int64))
