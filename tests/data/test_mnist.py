"""MNIST from IDX files (gzipped or raw), mnist.npz, and Keras' download; each bad input."""

from __future__ import annotations

import gzip

import keras
import numpy as np
import pytest

from tests.data.conftest import fake_mnist_arrays, write_idx
from training.data import DataError, load_mnist


@pytest.mark.parametrize("fmt", ["gz", "raw", "npz"])
def test_loads_every_format(make_mnist, fmt: str) -> None:
    root = make_mnist(fmt)
    ds = load_mnist(root, val_fraction=0.1, seed=0)
    expected = fake_mnist_arrays(60, 20)
    assert ds.class_names == [str(d) for d in range(10)]
    assert ds.input_shape == (28, 28, 1)
    assert (len(ds.train), len(ds.val)) == (54, 6)
    assert ds.test is not None
    np.testing.assert_array_equal(ds.test.x[..., 0], expected["x_test"])
    np.testing.assert_array_equal(ds.test.y, expected["y_test"])
    assert ds.train.x.dtype == np.uint8 and ds.train.y.dtype == np.int64
    # Every training image is one of the file's, with its own label.
    by_image = {
        img.tobytes(): int(label)
        for img, label in zip(expected["x_train"], expected["y_train"], strict=True)
    }
    for split in (ds.train, ds.val):
        for img, label in zip(split.x, split.y, strict=True):
            assert by_image[img[..., 0].tobytes()] == label
    assert str(root) in ds.source


def test_npz_path_itself_is_accepted(make_mnist) -> None:
    root = make_mnist("npz")
    assert len(load_mnist(root / "mnist.npz").train) == 54


def test_limit(make_mnist) -> None:
    ds = load_mnist(make_mnist("gz"), val_fraction=0.25, limit=20, seed=0)
    assert (len(ds.train), len(ds.val)) == (15, 5)
    assert ds.test is not None and len(ds.test) == 20


def test_missing_file_is_named(make_mnist) -> None:
    root = make_mnist("gz")
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_mnist(root)


def test_missing_folder_names_flag(tmp_path) -> None:
    with pytest.raises(DataError, match="--data-dir"):
        load_mnist(tmp_path / "nope")


def test_bad_magic_number(make_mnist) -> None:
    root = make_mnist("raw")
    write_idx(root / "train-images-idx3-ubyte", fake_mnist_arrays(60, 1)["x_train"], magic=2049)
    with pytest.raises(
        DataError, match=r"train-images-idx3-ubyte: magic number 2049, expected 2051"
    ):
        load_mnist(root)


def test_label_file_with_image_magic(make_mnist) -> None:
    root = make_mnist("gz")
    write_idx(root / "t10k-labels-idx1-ubyte.gz", np.zeros(20, np.uint8), magic=2051)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: magic number 2051"):
        load_mnist(root)


def test_count_mismatch_between_images_and_labels(make_mnist) -> None:
    root = make_mnist("gz")
    write_idx(root / "train-labels-idx1-ubyte.gz", np.arange(59) % 10)
    with pytest.raises(
        DataError, match=r"59 labels but .*train-images-idx3-ubyte.gz has 60 images"
    ):
        load_mnist(root)


def test_header_count_disagrees_with_data(make_mnist) -> None:
    root = make_mnist("raw")
    write_idx(root / "t10k-images-idx3-ubyte", fake_mnist_arrays(1, 20)["x_test"], count=25)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte: header says 25 images"):
        load_mnist(root)


def test_wrong_image_size(make_mnist) -> None:
    root = make_mnist("raw")
    write_idx(root / "train-images-idx3-ubyte", np.zeros((60, 14, 14), np.uint8))
    with pytest.raises(DataError, match="images are 14x14, expected 28x28"):
        load_mnist(root)


def test_label_out_of_range(make_mnist) -> None:
    labels = np.arange(60) % 10
    labels[7] = 12
    root = make_mnist("gz", y_train=labels.astype(np.uint8))
    with pytest.raises(
        DataError, match=r"train-labels-idx1-ubyte.gz: label 12 at index 7 is outside 0..9"
    ):
        load_mnist(root)


def test_corrupt_gzip_is_named(make_mnist) -> None:
    root = make_mnist("gz")
    path = root / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(b"x" * 100)[:30])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz"):
        load_mnist(root)


def test_single_class_rejected(make_mnist) -> None:
    root = make_mnist("npz", y_train=np.full(60, 3, np.uint8))
    with pytest.raises(DataError, match="at least 2 classes"):
        load_mnist(root)


def test_npz_missing_array(tmp_path) -> None:
    np.savez(tmp_path / "mnist.npz", x_train=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(
        DataError, match=r"mnist.npz: missing arrays \['y_train', 'x_test', 'y_test'\]"
    ):
        load_mnist(tmp_path)


def test_offline_download_names_data_dir(monkeypatch) -> None:
    def offline():
        raise OSError("URL fetch failure: [Errno -3] Temporary failure\nin name resolution")

    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline)
    with pytest.raises(DataError, match="--data-dir") as info:
        load_mnist(None)
    assert "\n" not in str(info.value)


def test_keras_download_used_without_data_dir(monkeypatch) -> None:
    arrays = fake_mnist_arrays(30, 10)

    def fake_load():
        return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])

    monkeypatch.setattr(keras.datasets.mnist, "load_data", fake_load)
    ds = load_mnist(None, val_fraction=0.1)
    assert ds.source == "keras download"
    assert (len(ds.train), len(ds.val)) == (27, 3)
