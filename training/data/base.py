"""What every dataset source returns: :class:`Dataset` of :class:`Split` s, or a :class:`DataError`.

Also the checks and file helpers the sources share, so each source module holds only what is
particular to its format.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("training.data")

#: Digits and MNIST are stored at this size; the embedded digits are upscaled to it.
MNIST_SIZE = 28


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
    #: where the test split came from (an official file, a test/ folder, a held-out share)
    test_origin: str = ""
    #: the input contract's crop (``"hand"``: images were cropped to the hand, and so must be
    #: every image the model is given; handserve.hands)
    crop: str | None = None
    #: files in which no hand was found (with ``crop``): kept whole or skipped, as asked
    no_hand: tuple[str, ...] = ()

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of every image: the model's input shape."""
        h, w, c = self.train.x.shape[1:]
        return (int(h), int(w), int(c))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def check_labels(y: np.ndarray, num_classes: int, where: str) -> None:
    if y.ndim != 1:
        raise DataError(f"{where}: labels have shape {y.shape}, expected (N,)")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        bad = y[(y < 0) | (y >= num_classes)]
        row = int(np.flatnonzero((y < 0) | (y >= num_classes))[0])
        raise DataError(f"{where}: label {bad[0]} at index {row} is outside 0..{num_classes - 1}")


def check_two_classes(y: np.ndarray, where: str) -> None:
    present = np.unique(y)
    if len(present) < 2:
        raise DataError(
            f"{where}: the training data has {len(present)} class(es); "
            "a classifier needs at least 2 classes"
        )


def log_summary(dataset: Dataset, source: str) -> None:
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


def find(root: Path, name: str) -> Path | None:
    """``root/name`` or ``root/name.gz``, whichever exists (the plain file wins)."""
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_bytes(path: Path) -> bytes:
    """The file's contents, gunzipped when it ends in ``.gz``; DataError names the file."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(f"{path} not found") from exc
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read {path}: {one_line(exc)}") from exc


def nhwc(x: np.ndarray) -> np.ndarray:
    """MNIST-style ``(N, 28, 28)`` arrays as ``(N, 28, 28, 1)`` ``uint8``."""
    return np.asarray(x, dtype=np.uint8).reshape(len(x), MNIST_SIZE, MNIST_SIZE, 1)


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
