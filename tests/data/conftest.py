"""Generators of tiny fake datasets in ``tmp_path``: MNIST IDX/npz, Sign MNIST CSVs, image folders.

Each fixture returns a factory so a test can write a variant (a bad header, a wrong magic
number, a corrupt image) with one keyword instead of a hand-written file.
"""

from __future__ import annotations

import gzip
import io
import struct
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SIGN_HEADER = ["label", *(f"pixel{i}" for i in range(1, 785))]
#: Raw Sign MNIST labels that exist (0..24 without 9).
SIGN_RAW_LABELS = [label for label in range(25) if label != 9]


def write_idx(
    path: Path, array: np.ndarray, *, magic: int | None = None, count: int | None = None
) -> Path:
    """Write ``array`` (uint8) as IDX; ``magic``/``count`` override the header to break it."""
    array = np.asarray(array, dtype=np.uint8)
    if magic is None:
        magic = 2051 if array.ndim == 3 else 2049
    dims = list(array.shape)
    if count is not None:
        dims[0] = count
    data = struct.pack(f">{1 + len(dims)}i", magic, *dims) + array.tobytes()
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def fake_mnist_arrays(n_train: int, n_test: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random 28x28 images whose labels cycle 0..9, so every class is present."""
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": (np.arange(n_train) % 10).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": (np.arange(n_test) % 10).astype(np.uint8),
    }


@pytest.fixture
def make_mnist(tmp_path: Path) -> Callable[..., Path]:
    """``make_mnist(fmt="gz"|"raw"|"npz", n_train=60, n_test=20, **arrays)`` -> folder."""

    def make(fmt: str = "gz", n_train: int = 60, n_test: int = 20, **arrays: np.ndarray) -> Path:
        root = tmp_path / f"mnist_{fmt}"
        root.mkdir()
        data = {**fake_mnist_arrays(n_train, n_test), **arrays}
        if fmt == "npz":
            np.savez_compressed(root / "mnist.npz", allow_pickle=False, **data)
            return root
        suffix = ".gz" if fmt == "gz" else ""
        write_idx(root / f"train-images-idx3-ubyte{suffix}", data["x_train"])
        write_idx(root / f"train-labels-idx1-ubyte{suffix}", data["y_train"])
        write_idx(root / f"t10k-images-idx3-ubyte{suffix}", data["x_test"])
        write_idx(root / f"t10k-labels-idx1-ubyte{suffix}", data["y_test"])
        return root

    return make


def write_sign_csv(
    path: Path,
    labels: Sequence[int],
    pixels: np.ndarray | None = None,
    *,
    header: Sequence[str] = SIGN_HEADER,
    rows: Sequence[str] | None = None,
) -> Path:
    """A Kaggle-style CSV with CRLF line endings; ``rows`` replaces the generated data rows."""
    if rows is None:
        if pixels is None:
            rng = np.random.default_rng(len(labels))
            pixels = rng.integers(0, 256, (len(labels), 784))
        rows = [
            ",".join(str(v) for v in (label, *pixel_row))
            for label, pixel_row in zip(labels, pixels, strict=True)
        ]
    text = "\r\n".join([",".join(header), *rows]) + "\r\n"
    data = text.encode("ascii")
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


@pytest.fixture
def make_sign_mnist(tmp_path: Path) -> Callable[..., Path]:
    """``make_sign_mnist(gz=True, per_class_train=3, per_class_test=1)`` -> folder of 2 CSVs."""

    def make(gz: bool = True, per_class_train: int = 3, per_class_test: int = 1) -> Path:
        root = tmp_path / ("sign_gz" if gz else "sign_csv")
        root.mkdir()
        suffix = ".csv.gz" if gz else ".csv"
        write_sign_csv(root / f"sign_mnist_train{suffix}", SIGN_RAW_LABELS * per_class_train)
        write_sign_csv(root / f"sign_mnist_test{suffix}", SIGN_RAW_LABELS * per_class_test)
        return root

    return make


#: (format, Pillow mode, size) cycled by the folder factory: every kind a user might drop in.
IMAGE_KINDS = [
    ("PNG", "RGB", (40, 30)),
    ("JPEG", "RGB", (64, 64)),
    ("PNG", "L", (20, 50)),
    ("PNG", "RGBA", (33, 33)),
    ("GIF", "P", (25, 25)),
    ("BMP", "RGB", (16, 24)),
    ("WEBP", "RGB", (48, 32)),
    ("PNG", "P", (12, 12)),
]
EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "GIF": ".gif", "BMP": ".bmp", "WEBP": ".webp"}


def write_image(path: Path, fmt: str, mode: str, size: tuple[int, int], seed: int = 0) -> Path:
    """A small random image in the given format and mode."""
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    if mode == "P":
        img = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    else:
        img = rgb.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    path.write_bytes(buf.getvalue())
    return path


def fill_class_folders(folder: Path, classes: Sequence[str], per_class: int) -> None:
    """``per_class`` images per class, cycling through every format/mode/size in IMAGE_KINDS."""
    n = 0
    for name in classes:
        for i in range(per_class):
            fmt, mode, size = IMAGE_KINDS[n % len(IMAGE_KINDS)]
            ext = EXTENSIONS[fmt]
            if n % 5 == 4:
                ext = ext.upper()  # extensions match case-insensitively
            write_image(folder / name / f"img{i:03d}{ext}", fmt, mode, size, seed=n)
            n += 1


@pytest.fixture
def make_folder(tmp_path: Path) -> Callable[..., Path]:
    """``make_folder(classes=("cat", "dog", "fox"), per_class=4, splits=None)`` -> root.

    ``splits`` like ``{"train": 4, "valid": 2, "test": 1}`` writes split sub-folders; ``None``
    writes class folders straight under the root.
    """

    def make(
        classes: Sequence[str] = ("cat", "dog", "fox"),
        per_class: int = 4,
        splits: dict[str, int] | None = None,
        name: str = "pets",
    ) -> Path:
        root = tmp_path / name
        root.mkdir()
        if splits is None:
            fill_class_folders(root, classes, per_class)
        else:
            for split, count in splits.items():
                fill_class_folders(root / split, classes, count)
        return root

    return make
