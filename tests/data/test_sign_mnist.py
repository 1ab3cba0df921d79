"""Sign Language MNIST CSVs: parsing, the A..Y-without-J label map, and every bad input."""

from __future__ import annotations

import numpy as np
import pytest

from tests.data.conftest import SIGN_HEADER, SIGN_RAW_LABELS, write_sign_csv
from training.data import DataError, load_sign_mnist

LETTERS = list("ABCDEFGHIKLMNOPQRSTUVWXY")


@pytest.mark.parametrize("gz", [True, False])
def test_loads_and_maps_labels(make_sign_mnist, gz: bool) -> None:
    ds = load_sign_mnist(make_sign_mnist(gz=gz), val_fraction=0.25, seed=0)
    assert ds.name == "sign_mnist"
    assert ds.class_names == LETTERS and ds.num_classes == 24
    assert "J" not in ds.class_names and "Z" not in ds.class_names
    assert ds.input_shape == (28, 28, 1)
    assert (len(ds.train), len(ds.val)) == (54, 18)
    assert ds.test is not None and len(ds.test) == 24
    assert ds.train.x.dtype == np.uint8 and ds.train.y.dtype == np.int64
    # The test file has one row per raw label, in order: raw 0..8 -> A..I, 10..24 -> K..Y.
    np.testing.assert_array_equal(ds.test.y, np.arange(24))
    assert [ds.class_names[i] for i in ds.test.y[[0, 8, 9, 23]]] == ["A", "I", "K", "Y"]


def test_pixels_keep_row_order(tmp_path) -> None:
    pixels = np.arange(2 * 784).reshape(2, 784) % 256
    write_sign_csv(tmp_path / "sign_mnist_train.csv", [0, 24], pixels)
    write_sign_csv(tmp_path / "sign_mnist_test.csv", [10, 1], pixels)
    ds = load_sign_mnist(tmp_path, val_fraction=0.0)
    np.testing.assert_array_equal(ds.train.x.reshape(2, 784), pixels)
    np.testing.assert_array_equal(ds.train.y, [0, 23])
    assert ds.test is not None
    np.testing.assert_array_equal(ds.test.y, [9, 1])


def _pair(tmp_path, **train_kwargs):
    write_sign_csv(tmp_path / "sign_mnist_test.csv", SIGN_RAW_LABELS)
    return write_sign_csv(tmp_path / "sign_mnist_train.csv", **train_kwargs)


def test_missing_file_is_named(tmp_path) -> None:
    write_sign_csv(tmp_path / "sign_mnist_train.csv", SIGN_RAW_LABELS)
    with pytest.raises(DataError, match=r"sign_mnist_test.csv"):
        load_sign_mnist(tmp_path)


def test_missing_folder_names_flag(tmp_path) -> None:
    with pytest.raises(DataError, match="--data-dir"):
        load_sign_mnist(tmp_path / "nope")


def test_wrong_header_columns(tmp_path) -> None:
    header = ["label", *SIGN_HEADER[1:]]
    header[5] = "pixle5"
    _pair(tmp_path, labels=SIGN_RAW_LABELS, header=header)
    with pytest.raises(DataError, match=r"sign_mnist_train.csv: .*column 6 is 'pixle5'"):
        load_sign_mnist(tmp_path)


def test_missing_header_columns(tmp_path) -> None:
    _pair(tmp_path, labels=[0], header=SIGN_HEADER[:-2], rows=["0" + ",1" * 782])
    with pytest.raises(DataError, match="header has 783 columns, expected 785"):
        load_sign_mnist(tmp_path)


def test_no_header(tmp_path) -> None:
    _pair(tmp_path, labels=[0], header=["3", *["0"] * 784])
    with pytest.raises(DataError, match="column 1 is '3', expected 'label'"):
        load_sign_mnist(tmp_path)


@pytest.mark.parametrize("label", [9, 25, -1])
def test_bad_label_names_row(tmp_path, label: int) -> None:
    _pair(tmp_path, labels=[0, 1, label, 2])
    with pytest.raises(DataError, match=rf"sign_mnist_train.csv: row 3 has label {label}"):
        load_sign_mnist(tmp_path)


def test_short_row_names_row(tmp_path) -> None:
    rows = ["0" + ",5" * 784, "1" + ",5" * 784, "2" + ",5" * 700]
    _pair(tmp_path, labels=[], rows=rows)
    with pytest.raises(DataError, match="row 3 has 701 columns, expected 785"):
        load_sign_mnist(tmp_path)


def test_non_integer_cell_names_row(tmp_path) -> None:
    rows = ["0" + ",5" * 784, "1" + ",5" * 783 + ",x"]
    _pair(tmp_path, labels=[], rows=rows)
    with pytest.raises(DataError, match="row 2 column pixel784 is 'x'"):
        load_sign_mnist(tmp_path)


def test_pixel_out_of_range_names_row(tmp_path) -> None:
    pixels = np.zeros((3, 784), np.int64)
    pixels[1, 10] = 300
    _pair(tmp_path, labels=[0, 1, 2], pixels=pixels)
    with pytest.raises(DataError, match=r"row 2 has pixel value 300 outside 0..255"):
        load_sign_mnist(tmp_path)


def test_single_class_rejected(tmp_path) -> None:
    _pair(tmp_path, labels=[4, 4, 4])
    with pytest.raises(DataError, match="at least 2 classes"):
        load_sign_mnist(tmp_path)


def test_header_only(tmp_path) -> None:
    _pair(tmp_path, labels=[])
    with pytest.raises(DataError, match="no data rows"):
        load_sign_mnist(tmp_path)
