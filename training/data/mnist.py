"""MNIST from the four IDX files (gzipped or not), an ``mnist.npz``, or Keras' download."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np

from training.config import TrainConfig
from training.data import splits
from training.data.base import (
    MNIST_SIZE,
    DataError,
    Dataset,
    Split,
    check_labels,
    find,
    nhwc,
    one_line,
    read_bytes,
)

IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def from_config(cfg: TrainConfig) -> Dataset:
    return load_mnist(cfg.data_dir, val_fraction=cfg.val_fraction, seed=cfg.seed, limit=cfg.limit)


def load_mnist(
    data_dir: str | os.PathLike[str] | None,
    *,
    val_fraction: float = 0.1,
    seed: int = 42,
    limit: int | None = None,
) -> Dataset:
    """MNIST from the four IDX files (gzipped or not) or ``mnist.npz`` in ``data_dir``.

    With no ``data_dir`` it uses Keras' download, which needs the internet; offline, the error
    names ``--data-dir``. The official 10,000 test images are the test split; validation is held
    out from the 60,000 training images.
    """
    if data_dir is None:
        (x_train, y_train), (x_test, y_test) = _download()
        source, where = "keras download", "keras mnist"
    else:
        x_train, y_train, x_test, y_test, source = _read_folder(Path(data_dir))
        where = source
    for labels, name in ((y_train, "training"), (y_test, "test")):
        check_labels(np.asarray(labels), 10, f"{where}: {name} labels")
    test = Split(nhwc(x_test), np.asarray(y_test, dtype=np.int64))
    return splits.finish(
        "mnist",
        [str(d) for d in range(10)],
        nhwc(x_train),
        np.asarray(y_train, dtype=np.int64),
        test,
        source,
        val_fraction=val_fraction,
        seed=seed,
        limit_to=limit,
        where=where,
        test_origin="the official MNIST test images",
    )


Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _download() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Keras' MNIST download (cached in ~/.keras); offline, the error names ``--data-dir``."""
    try:
        import keras

        return keras.datasets.mnist.load_data()
    except Exception as exc:
        raise DataError(
            f"could not download MNIST ({type(exc).__name__}: {one_line(exc)}); offline, "
            "pass --data-dir FOLDER with the IDX files (train-images-idx3-ubyte[.gz], ...) "
            "or mnist.npz"
        ) from exc


def _read_folder(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """The four IDX files in ``root``, else its ``mnist.npz`` (``root`` may be the .npz)."""
    if root.is_file() and root.suffix == ".npz":
        root, npz = root.parent, root
    else:
        npz = root / "mnist.npz"
    if not root.is_dir():
        raise DataError(f"MNIST folder {root} does not exist (check --data-dir)")
    idx = {key: find(root, name) for key, name in MNIST_FILES.items()}
    found = {key: path for key, path in idx.items() if path is not None}
    if len(found) == len(MNIST_FILES):
        x_train = _read_idx_images(found["train_images"])
        y_train = _read_idx_labels(found["train_labels"], len(x_train), found["train_images"])
        x_test = _read_idx_images(found["test_images"])
        y_test = _read_idx_labels(found["test_labels"], len(x_test), found["test_images"])
        return x_train, y_train, x_test, y_test, str(root)
    if npz.is_file():
        return (*_read_mnist_npz(npz), str(npz))
    missing = next(name for key, name in MNIST_FILES.items() if idx[key] is None)
    raise DataError(
        f"MNIST file {root / missing}[.gz] not found (and no {npz.name}): "
        "point --data-dir at the folder with the four IDX files or mnist.npz"
    )


def _read_idx_images(path: Path) -> np.ndarray:
    """An IDX3 ubyte image file: magic 2051, then count, rows, cols (big-endian int32)."""
    data = read_bytes(path)
    magic, n, rows, cols = _idx_header(data, path, 4)
    if magic != IDX_IMAGES_MAGIC:
        raise DataError(
            f"{path}: magic number {magic}, expected {IDX_IMAGES_MAGIC} for IDX images "
            "(is this a labels file?)"
        )
    if (rows, cols) != (MNIST_SIZE, MNIST_SIZE):
        raise DataError(f"{path}: images are {rows}x{cols}, expected {MNIST_SIZE}x{MNIST_SIZE}")
    if len(data) - 16 != n * rows * cols:
        raise DataError(
            f"{path}: header says {n} images of {rows}x{cols} ({n * rows * cols} bytes) but "
            f"{len(data) - 16} bytes follow (truncated or wrong count)"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, rows, cols)


def _read_idx_labels(path: Path, n_images: int, images: Path | None) -> np.ndarray:
    """An IDX1 ubyte label file (magic 2049), checked against its image file's count."""
    data = read_bytes(path)
    magic, n = _idx_header(data, path, 2)
    if magic != IDX_LABELS_MAGIC:
        raise DataError(
            f"{path}: magic number {magic}, expected {IDX_LABELS_MAGIC} for IDX labels "
            "(is this an images file?)"
        )
    if len(data) - 8 != n:
        raise DataError(
            f"{path}: header says {n} labels but {len(data) - 8} bytes follow (truncated?)"
        )
    if n != n_images:
        raise DataError(f"{path}: {n} labels but {images} has {n_images} images")
    labels = np.frombuffer(data, dtype=np.uint8, offset=8).astype(np.int64)
    check_labels(labels, 10, str(path))
    return labels


def _idx_header(data: bytes, path: Path, fields: int) -> tuple[int, ...]:
    if len(data) < 4 * fields:
        raise DataError(f"{path}: {len(data)} bytes is too short for an IDX header")
    return tuple(int(v) for v in np.frombuffer(data, dtype=">i4", count=fields))


def _read_mnist_npz(path: Path) -> Arrays:
    """Keras' ``mnist.npz`` layout: x_train, y_train, x_test, y_test."""
    keys = ("x_train", "y_train", "x_test", "y_test")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [key for key in keys if key not in npz.files]
            if missing:
                raise DataError(f"{path}: missing arrays {missing} (needs {', '.join(keys)})")
            arrays = {key: npz[key] for key in keys}
    except DataError:
        raise
    except (OSError, ValueError, zlib.error) as exc:
        raise DataError(f"{path}: not a readable .npz file ({one_line(exc)})") from exc
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if x.ndim != 3 or x.shape[1:] != (MNIST_SIZE, MNIST_SIZE):
            raise DataError(f"{path}: x_{part} has shape {x.shape}, expected (N, 28, 28)")
        if y.shape != (len(x),):
            raise DataError(
                f"{path}: y_{part} has shape {y.shape} but x_{part} has {len(x)} images"
            )
        if x.size and (x.min() < 0 or x.max() > 255):
            raise DataError(f"{path}: x_{part} has values outside 0..255")
    return arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"]
