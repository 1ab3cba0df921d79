"""Datasets as in-memory ``uint8`` arrays, and the ``tf.data`` pipelines that feed them to Keras.

Four sources, all returning the same :class:`Dataset` so the rest of training never cares where
images came from: the embedded scikit-learn digits (the offline default), MNIST (IDX files, an
``mnist.npz`` or Keras' download), Sign Language MNIST (the Kaggle CSVs) and folders of images.
Folder images go through :mod:`handserve.images`, the same code the service uses, so a photo
becomes the same model input in training and in serving.

Every split is seeded and stratified: the same config always gives the same train/val/test
images, and rare classes keep their share of each split. Bad input stops with a one-line
:class:`DataError` naming the file, row or flag to fix, before any training time is spent.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from handserve.images import IMAGE_EXTENSIONS, ImageDecodeError, ImageSpec, open_image, to_array
from training.config import TrainConfig

log = logging.getLogger(__name__)

__all__ = [
    "DataError",
    "Dataset",
    "Split",
    "load_dataset",
    "load_digits",
    "load_folder",
    "load_mnist",
    "load_sign_mnist",
    "make_pipeline",
]

#: Digits and MNIST are stored at this size; the embedded digits are upscaled to it.
MNIST_SIZE = 28
#: The embedded digits have no official test set: this share is held out as one (seeded).
DIGITS_TEST_FRACTION = 0.2
#: Sign Language MNIST letters: 24 static signs, A-Y without J (J and Z need motion).
SIGN_LETTERS = tuple("ABCDEFGHIKLMNOPQRSTUVWXY")
#: The raw Kaggle label with no images (it would be J).
SIGN_MISSING_LABEL = 9
SIGN_COLUMNS = ("label", *(f"pixel{i}" for i in range(1, MNIST_SIZE * MNIST_SIZE + 1)))
#: Names accepted for a folder dataset's validation sub-folder, in order of preference.
VAL_DIR_NAMES = ("valid", "val", "validation")
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# Distinct random streams per purpose, so changing val_fraction never moves the test split.
_SALT_TEST, _SALT_LIMIT, _SALT_VAL = 1, 2, 3


class DataError(ValueError):
    """Unusable input data; the message is one line naming the file, row or flag to fix."""


@dataclass(frozen=True, eq=False)  # eq=False: comparing ndarrays field-wise is ambiguous
class Split:
    """Images and labels of one split, at the dataset's native size.

    Attributes:
        x: ``(N, H, W, C)`` ``uint8`` images, 0-255 (uint8 keeps MNIST-sized data a few MB).
        y: ``(N,)`` ``int64`` class indices ``0..num_classes-1``.
    """

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        if self.x.ndim != 4 or self.y.shape != (len(self.x),):
            raise ValueError(
                f"Split needs x (N, H, W, C) and y (N,), got {self.x.shape}, {self.y.shape}"
            )

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded dataset: class names, the three splits and where it came from.

    ``val`` is held out from the training data and used for early stopping; ``test`` is never
    used for early stopping or model selection, so its score is an honest estimate.
    """

    name: str
    class_names: list[str]
    train: Split
    val: Split
    test: Split | None
    source: str
    skipped: int = 0

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of every image: the model's input shape."""
        h, w, c = self.train.x.shape[1:]
        return (int(h), int(w), int(c))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# --------------------------------------------------------------------------- entry points


def load_dataset(cfg: TrainConfig) -> Dataset:
    """Load the dataset ``cfg.dataset`` names, split and limited as ``cfg`` says.

    Raises:
        DataError: the data is missing or malformed (the message says what to fix).
    """
    if cfg.dataset == "digits":
        return load_digits(val_fraction=cfg.val_fraction, seed=cfg.seed, limit=cfg.limit)
    if cfg.dataset == "mnist":
        return load_mnist(
            cfg.data_dir, val_fraction=cfg.val_fraction, seed=cfg.seed, limit=cfg.limit
        )
    if cfg.dataset == "sign_mnist":
        if cfg.data_dir is None:
            raise DataError(
                "sign_mnist has no download: pass --data-dir FOLDER with sign_mnist_train.csv "
                "and sign_mnist_test.csv (from Kaggle, optionally gzipped)"
            )
        return load_sign_mnist(
            cfg.data_dir, val_fraction=cfg.val_fraction, seed=cfg.seed, limit=cfg.limit
        )
    if cfg.dataset == "folder":
        if cfg.data_dir is None:
            raise DataError("the folder dataset needs --data-dir ROOT with one folder per class")
        return load_folder(
            cfg.data_dir,
            cfg.image_size,
            cfg.color_mode,
            val_fraction=cfg.val_fraction,
            test_fraction=cfg.test_fraction,
            seed=cfg.seed,
            limit=cfg.limit,
        )
    raise DataError(f"unknown dataset {cfg.dataset!r}: use digits, mnist, sign_mnist or folder")


def make_pipeline(
    split: Split,
    batch_size: int,
    *,
    training: bool,
    seed: int,
    augment: Callable[..., tf.Tensor] | None = None,
) -> tf.data.Dataset:
    """Batches of ``(float32 images 0-255, int64 labels)`` for ``model.fit`` / ``evaluate``.

    The cache comes before the random augmentation so every epoch sees fresh augmentations
    (caching after it would replay one round forever), and the images are cached as ``uint8``
    (a quarter of float32's memory). The shuffle buffer holds the whole split: loaders return
    images grouped by class, so a smaller buffer would give single-class batches. Evaluation
    pipelines (``training=False``) keep the split's order and never augment.

    Args:
        split: the images and labels.
        batch_size: images per batch (the last batch may be smaller).
        training: shuffle (reshuffled every epoch) and augment.
        seed: shuffle seed; the same seed gives the same sequence of epochs.
        augment: called as ``augment(images, training=True)`` on float32 batches, training only
            (a Keras layer or model from ``training.augment``).
    """
    ds = tf.data.Dataset.from_tensor_slices((split.x, split.y)).cache()
    if training:
        ds = ds.shuffle(max(1, len(split)), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
    if training and augment is not None:
        ds = ds.map(
            lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE
        )
    return ds.prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------- digits


def load_digits(*, val_fraction: float = 0.1, seed: int = 42, limit: int | None = None) -> Dataset:
    """scikit-learn's 1,797 real handwritten 8x8 digits, upscaled to MNIST's 28x28 greyscale.

    Bundled with scikit-learn, so the quickstart trains on real handwriting with no download.
    Values 0-16 are scaled to 0-255 before a bilinear resize; high values are ink, as in MNIST.
    ``DIGITS_TEST_FRACTION`` is held out (seeded, stratified) as the test split.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    small = np.round(np.asarray(bunch.images, dtype=np.float64) * (255.0 / 16.0))
    small = np.clip(small, 0, 255).astype(np.uint8)
    x = np.stack(
        [
            np.asarray(
                Image.fromarray(img).resize((MNIST_SIZE, MNIST_SIZE), Image.Resampling.BILINEAR),
                dtype=np.uint8,
            )
            for img in small
        ]
    )[..., None]
    y = np.asarray(bunch.target, dtype=np.int64)
    pool, test = _hold_out(y, DIGITS_TEST_FRACTION, seed, _SALT_TEST)
    return _finish(
        "digits",
        [str(d) for d in range(10)],
        x[pool],
        y[pool],
        Split(x[test], y[test]),
        "embedded (scikit-learn load_digits)",
        val_fraction=val_fraction,
        seed=seed,
        limit=limit,
        where="scikit-learn digits",
    )


# --------------------------------------------------------------------------- MNIST


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
        try:
            import keras

            (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
        except Exception as exc:
            raise DataError(
                f"could not download MNIST ({type(exc).__name__}: {_one_line(exc)}); offline, "
                "pass --data-dir FOLDER with the IDX files (train-images-idx3-ubyte[.gz], ...) "
                "or mnist.npz"
            ) from exc
        source = "keras download"
        where = "keras mnist"
    else:
        root = Path(data_dir)
        if root.is_file() and root.suffix == ".npz":
            root, npz = root.parent, root
        else:
            npz = root / "mnist.npz"
        if not root.is_dir():
            raise DataError(f"MNIST folder {root} does not exist (check --data-dir)")
        idx = {key: _find(root, name) for key, name in MNIST_FILES.items()}
        if all(idx.values()):
            x_train = _read_idx_images(_must(idx["train_images"]))
            y_train = _read_idx_labels(
                _must(idx["train_labels"]), len(x_train), idx["train_images"]
            )
            x_test = _read_idx_images(_must(idx["test_images"]))
            y_test = _read_idx_labels(_must(idx["test_labels"]), len(x_test), idx["test_images"])
            source = str(root)
        elif npz.is_file():
            x_train, y_train, x_test, y_test = _read_mnist_npz(npz)
            source = str(npz)
        else:
            missing = next(name for key, name in MNIST_FILES.items() if idx[key] is None)
            raise DataError(
                f"MNIST file {root / missing}[.gz] not found (and no {npz.name}): "
                "point --data-dir at the folder with the four IDX files or mnist.npz"
            )
        where = source
    for labels, name in ((y_train, "training"), (y_test, "test")):
        _check_labels(np.asarray(labels), 10, f"{where}: {name} labels")
    test = Split(_nhwc(x_test), np.asarray(y_test, dtype=np.int64))
    return _finish(
        "mnist",
        [str(d) for d in range(10)],
        _nhwc(x_train),
        np.asarray(y_train, dtype=np.int64),
        test,
        source,
        val_fraction=val_fraction,
        seed=seed,
        limit=limit,
        where=where,
    )


def _read_idx_images(path: Path) -> np.ndarray:
    """An IDX3 ubyte image file: magic 2051, then count, rows, cols (big-endian int32)."""
    data = _read_bytes(path)
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
    data = _read_bytes(path)
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
    _check_labels(labels, 10, str(path))
    return labels


def _idx_header(data: bytes, path: Path, fields: int) -> tuple[int, ...]:
    if len(data) < 4 * fields:
        raise DataError(f"{path}: {len(data)} bytes is too short for an IDX header")
    return tuple(int(v) for v in np.frombuffer(data, dtype=">i4", count=fields))


def _read_mnist_npz(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
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
        raise DataError(f"{path}: not a readable .npz file ({_one_line(exc)})") from exc
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


# --------------------------------------------------------------------------- Sign Language MNIST


def load_sign_mnist(
    data_dir: str | os.PathLike[str],
    *,
    val_fraction: float = 0.1,
    seed: int = 42,
    limit: int | None = None,
) -> Dataset:
    """Sign Language MNIST from Kaggle's ``sign_mnist_{train,test}.csv`` (or ``.csv.gz``).

    Raw labels 0-24 skip 9 (J needs motion); they are mapped to 24 contiguous classes A-Y
    without J, so the model has no output that can never be right.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"Sign Language MNIST folder {root} does not exist (check --data-dir)")
    splits = []
    for stem in ("sign_mnist_train", "sign_mnist_test"):
        path = _find(root, f"{stem}.csv")
        if path is None:
            raise DataError(
                f"{root / stem}.csv[.gz] not found: download it from Kaggle into --data-dir"
            )
        splits.append(_read_sign_csv(path))
    (x_train, y_train), (x_test, y_test) = splits
    return _finish(
        "sign_mnist",
        list(SIGN_LETTERS),
        x_train,
        y_train,
        Split(x_test, y_test),
        str(root),
        val_fraction=val_fraction,
        seed=seed,
        limit=limit,
        where=str(root),
    )


def _read_sign_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse one Kaggle CSV with NumPy's C parser (27,455 rows in about a second).

    Row-by-row checks in Python only run after the fast parse fails, to say which row is bad.
    """
    text = _read_bytes(path).decode("ascii", errors="replace")
    first, _, body = text.partition("\n")
    header = [name.strip() for name in first.strip().split(",")]
    if header != list(SIGN_COLUMNS):
        raise DataError(f"{path}: {_describe_header(header)}")
    if not body.strip():
        raise DataError(f"{path}: no data rows after the header")
    try:
        table = np.loadtxt(io.StringIO(body), delimiter=",", dtype=np.int32, ndmin=2)
    except ValueError as exc:
        raise DataError(f"{path}: {_diagnose_rows(body, exc)}") from exc
    if table.shape[1] != len(SIGN_COLUMNS):
        raise DataError(f"{path}: row 1 has {table.shape[1]} columns, expected {len(SIGN_COLUMNS)}")
    raw, pixels = table[:, 0], table[:, 1:]
    bad = np.flatnonzero((pixels < 0).any(axis=1) | (pixels > 255).any(axis=1))
    if bad.size:
        row = int(bad[0])
        values = pixels[row][(pixels[row] < 0) | (pixels[row] > 255)]
        raise DataError(f"{path}: row {row + 1} has pixel value {values[0]} outside 0..255")
    bad = np.flatnonzero((raw < 0) | (raw > 24) | (raw == SIGN_MISSING_LABEL))
    if bad.size:
        row = int(bad[0])
        raise DataError(
            f"{path}: row {row + 1} has label {raw[row]}; Sign Language MNIST labels are 0..24 "
            f"without {SIGN_MISSING_LABEL} (J)"
        )
    labels = np.where(raw > SIGN_MISSING_LABEL, raw - 1, raw).astype(np.int64)
    x = pixels.astype(np.uint8).reshape(-1, MNIST_SIZE, MNIST_SIZE, 1)
    return x, labels


def _describe_header(header: list[str]) -> str:
    expected = list(SIGN_COLUMNS)
    if len(header) != len(expected):
        what = f"header has {len(header)} columns, expected {len(expected)}"
    else:
        what = "header columns differ from label,pixel1..pixel784"
    wrong = [
        f"column {i + 1} is {got!r}, expected {want!r}"
        for i, (got, want) in enumerate(zip(header, expected, strict=False))
        if got != want
    ]
    if wrong:
        more = f" (and {len(wrong) - 3} more)" if len(wrong) > 3 else ""
        what += ": " + "; ".join(wrong[:3]) + more
    elif len(header) < len(expected):
        what += f": missing {', '.join(expected[len(header) : len(header) + 3])}..."
    else:
        what += f": unexpected {', '.join(header[len(expected) : len(expected) + 3])}"
    return what


def _diagnose_rows(body: str, exc: Exception) -> str:
    """Find the first row that made the fast parse fail (slow, only runs on bad files)."""
    for number, line in enumerate(body.splitlines(), start=1):
        if not line.strip():
            continue
        cells = line.split(",")
        if len(cells) != len(SIGN_COLUMNS):
            return f"row {number} has {len(cells)} columns, expected {len(SIGN_COLUMNS)}"
        for column, cell in zip(SIGN_COLUMNS, cells, strict=True):
            try:
                int(cell)
            except ValueError:
                return f"row {number} column {column} is {cell.strip()!r}, not an integer"
    return f"could not parse the rows ({_one_line(exc)})"


# --------------------------------------------------------------------------- image folders


@dataclass(frozen=True)
class _Files:
    """Image paths with their class indices, split before any pixel is decoded."""

    paths: list[Path]
    y: np.ndarray

    def take(self, idx: np.ndarray) -> _Files:
        return _Files([self.paths[i] for i in idx], self.y[idx])


def load_folder(
    root: str | os.PathLike[str],
    image_size: int,
    color_mode: str,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.0,
    seed: int = 42,
    limit: int | None = None,
) -> Dataset:
    """Images in ``ROOT/<class>/``, or ``ROOT/{train,valid,test}/<class>/``.

    Without ``valid/`` (also ``val/``, ``validation/``), ``val_fraction`` of the training images
    is held out; without ``test/``, ``test_fraction`` is. Every image is decoded and resized by
    :mod:`handserve.images`, the code the service runs. Corrupt images are logged, skipped and
    counted in ``Dataset.skipped``; ``limit`` is applied before decoding, so quick runs on a big
    folder stay quick.

    Args:
        root: the dataset folder; its name becomes the dataset name.
        image_size: images are resized to ``image_size`` x ``image_size``.
        color_mode: ``"rgb"`` or ``"grayscale"``.
    """
    if color_mode not in ("rgb", "grayscale"):
        raise DataError(f"color_mode must be 'rgb' or 'grayscale', got {color_mode!r}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist (check --data-dir)")
    spec = ImageSpec(image_size, image_size, 1 if color_mode == "grayscale" else 3)

    train_dir = root / "train"
    if train_dir.is_dir():
        class_names = _class_dirs(train_dir)
        val_dir = next((root / n for n in VAL_DIR_NAMES if (root / n).is_dir()), None)
        test_dir = root / "test" if (root / "test").is_dir() else None
        for other in (val_dir, test_dir):
            if other is not None:
                _same_classes(other, _class_dirs(other), train_dir, class_names)
        parts = [d.name if d else "-" for d in (train_dir, val_dir, test_dir)]
        layout = "/".join(parts)
    else:
        train_dir, val_dir, test_dir = root, None, None
        class_names = _class_dirs(root)
        layout = "class folders"
    if len(class_names) < 2:
        raise DataError(
            f"{train_dir} has {len(class_names)} class folder(s) {class_names}: "
            "a classifier needs at least 2 classes"
        )

    pool = _list_images(train_dir, class_names)
    if test_dir is not None:
        test_files: _Files | None = _list_images(test_dir, class_names)
    elif test_fraction > 0:
        keep, held = _hold_out(pool.y, test_fraction, seed, _SALT_TEST)
        pool, test_files = pool.take(keep), pool.take(held)
    else:
        test_files = None
    pool = pool.take(_limit(pool.y, limit, seed))
    if val_dir is not None:
        val_files = _list_images(val_dir, class_names)
    else:
        keep, held = _hold_out(pool.y, val_fraction, seed, _SALT_VAL)
        pool, val_files = pool.take(keep), pool.take(held)

    skipped = 0
    train, n = _decode_all(pool, spec)
    skipped += n
    val, n = _decode_all(val_files, spec)
    skipped += n
    test = None
    if test_files is not None:
        test, n = _decode_all(test_files, spec)
        skipped += n
    if skipped:
        log.warning("skipped %d corrupt images in %s", skipped, root)
    dataset = Dataset(
        name=root.resolve().name,
        class_names=class_names,
        train=train,
        val=val,
        test=test,
        source=str(root),
        skipped=skipped,
    )
    _check_two_classes(train.y, str(train_dir))
    _log_summary(dataset, layout)
    return dataset


def _class_dirs(folder: Path) -> list[str]:
    """Sorted class folder names; hidden folders (``.ipynb_checkpoints``, ...) are not classes."""
    try:
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        raise DataError(f"cannot list {folder}: {_one_line(exc)}") from exc


def _same_classes(folder: Path, names: list[str], train_dir: Path, train_names: list[str]) -> None:
    if names != train_names:
        missing = sorted(set(train_names) - set(names))
        extra = sorted(set(names) - set(train_names))
        raise DataError(
            f"{folder} must have the same class folders as {train_dir}: "
            f"missing {missing or 'none'}, extra {extra or 'none'}"
        )


def _list_images(folder: Path, class_names: list[str]) -> _Files:
    """Every image file (by extension, any case) of each class folder, in a stable order."""
    paths: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(class_names):
        class_dir = folder / name
        try:
            found = sorted(
                p
                for p in class_dir.iterdir()
                if p.suffix.lower() in IMAGE_EXTENSIONS
                and not p.name.startswith(".")
                and p.is_file()
            )
        except OSError as exc:
            raise DataError(f"cannot list {class_dir}: {_one_line(exc)}") from exc
        if not found:
            raise DataError(
                f"class folder {class_dir} has no images ({', '.join(IMAGE_EXTENSIONS)})"
            )
        paths.extend(found)
        labels.extend([index] * len(found))
    return _Files(paths, np.asarray(labels, dtype=np.int64))


def _decode_all(files: _Files, spec: ImageSpec) -> tuple[Split, int]:
    """Decode in threads (Pillow releases the GIL while decoding); corrupt files become None."""
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        arrays = list(pool.map(lambda p: _decode_file(p, spec), files.paths))
    ok = np.asarray([a is not None for a in arrays], dtype=bool)
    for index in np.unique(files.y):
        in_class = files.y == index
        if not ok[in_class].any():
            folder = files.paths[int(np.flatnonzero(in_class)[0])].parent
            raise DataError(f"class folder {folder} has no readable images (all corrupt)")
    good = [a for a in arrays if a is not None]
    x = np.stack(good) if good else np.zeros((0, spec.height, spec.width, spec.channels), np.uint8)
    return Split(x, files.y[ok]), int((~ok).sum())


def _decode_file(path: Path, spec: ImageSpec) -> np.ndarray | None:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {_one_line(exc)}") from exc
    try:
        return to_array(open_image(data), spec)
    except ImageDecodeError as exc:
        log.warning("skipping corrupt image %s: %s", path, exc.message)
        return None


# --------------------------------------------------------------------------- splits and checks


def _finish(
    name: str,
    class_names: list[str],
    x: np.ndarray,
    y: np.ndarray,
    test: Split | None,
    source: str,
    *,
    val_fraction: float,
    seed: int,
    limit: int | None,
    where: str,
) -> Dataset:
    """Limit the training pool, hold out validation, and build the :class:`Dataset`."""
    _check_two_classes(y, where)
    idx = _limit(y, limit, seed)
    x, y = x[idx], y[idx]
    keep, held = _hold_out(y, val_fraction, seed, _SALT_VAL)
    dataset = Dataset(
        name=name,
        class_names=class_names,
        train=Split(x[keep], y[keep]),
        val=Split(x[held], y[held]),
        test=test,
        source=source,
    )
    _log_summary(dataset, source)
    return dataset


def _stratified_order(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A seeded permutation that interleaves classes in proportion to their sizes.

    Any prefix of it is a stratified sample, and the first ``num_classes`` entries hold one
    image of every class, so a prefix keeps every class represented whenever it can.
    """
    perm = rng.permutation(len(y))
    labels = y[perm]
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(y), dtype=np.int64)
    rank[order] = np.arange(len(y)) - starts[labels[order]]
    key = rank / counts[labels]
    return perm[np.lexsort((np.arange(len(y)), key))]


def _hold_out(
    y: np.ndarray, fraction: float, seed: int, salt: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(keep, held)``: a seeded, stratified ``fraction`` held out, both sorted.

    At least one image is held out when ``fraction > 0`` and at least one is kept.
    """
    n = len(y)
    n_held = round(n * fraction)
    if fraction > 0 and n >= 2:
        n_held = min(max(1, n_held), n - 1)
    if n_held <= 0:
        return np.arange(n), np.zeros(0, dtype=np.int64)
    order = _stratified_order(y, np.random.default_rng([seed, salt]))
    return np.sort(order[: n - n_held]), np.sort(order[n - n_held :])


def _limit(y: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """Sorted indices of at most ``limit`` images, a seeded stratified sample."""
    if limit is None or limit >= len(y):
        return np.arange(len(y))
    order = _stratified_order(y, np.random.default_rng([seed, _SALT_LIMIT]))
    return np.sort(order[:limit])


def _check_labels(y: np.ndarray, num_classes: int, where: str) -> None:
    if y.ndim != 1:
        raise DataError(f"{where}: labels have shape {y.shape}, expected (N,)")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        bad = y[(y < 0) | (y >= num_classes)]
        row = int(np.flatnonzero((y < 0) | (y >= num_classes))[0])
        raise DataError(f"{where}: label {bad[0]} at index {row} is outside 0..{num_classes - 1}")


def _check_two_classes(y: np.ndarray, where: str) -> None:
    present = np.unique(y)
    if len(present) < 2:
        raise DataError(
            f"{where}: the training data has {len(present)} class(es); "
            "a classifier needs at least 2 classes"
        )


def _log_summary(dataset: Dataset, source: str) -> None:
    h, w, c = dataset.input_shape
    log.info(
        "%s: %d train, %d val, %s test images of %dx%dx%d in %d classes (%s)",
        dataset.name,
        len(dataset.train),
        len(dataset.val),
        len(dataset.test) if dataset.test is not None else "no",
        h,
        w,
        c,
        dataset.num_classes,
        source,
    )


# --------------------------------------------------------------------------- files


def _find(root: Path, name: str) -> Path | None:
    """``root/name`` or ``root/name.gz``, whichever exists (the plain file wins)."""
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _must(path: Path | None) -> Path:
    assert path is not None  # callers check all files exist first
    return path


def _read_bytes(path: Path) -> bytes:
    """The file's contents, gunzipped when it ends in ``.gz``; DataError names the file."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(f"{path} not found") from exc
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read {path}: {_one_line(exc)}") from exc


def _nhwc(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.uint8).reshape(len(x), MNIST_SIZE, MNIST_SIZE, 1)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
