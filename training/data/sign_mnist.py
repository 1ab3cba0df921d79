"""Sign Language MNIST from Kaggle's ``sign_mnist_{train,test}.csv`` (or ``.csv.gz``)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from training.config import TrainConfig
from training.data import splits
from training.data.base import MNIST_SIZE, DataError, Dataset, Split, find, one_line, read_bytes

#: Sign Language MNIST letters: 24 static signs, A-Y without J (J and Z need motion).
SIGN_LETTERS = tuple("ABCDEFGHIKLMNOPQRSTUVWXY")
#: The raw Kaggle label with no images (it would be J).
SIGN_MISSING_LABEL = 9
SIGN_COLUMNS = ("label", *(f"pixel{i}" for i in range(1, MNIST_SIZE * MNIST_SIZE + 1)))


def from_config(cfg: TrainConfig) -> Dataset:
    if cfg.data_dir is None:
        raise DataError(
            "sign_mnist has no download: pass --data-dir FOLDER with sign_mnist_train.csv "
            "and sign_mnist_test.csv (from Kaggle, optionally gzipped)"
        )
    return load_sign_mnist(
        cfg.data_dir, val_fraction=cfg.val_fraction, seed=cfg.seed, limit=cfg.limit
    )


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
    parts = []
    for stem in ("sign_mnist_train", "sign_mnist_test"):
        path = find(root, f"{stem}.csv")
        if path is None:
            raise DataError(
                f"{root / stem}.csv[.gz] not found: download it from Kaggle into --data-dir"
            )
        parts.append(_read_sign_csv(path))
    (x_train, y_train), (x_test, y_test) = parts
    return splits.finish(
        "sign_mnist",
        list(SIGN_LETTERS),
        x_train,
        y_train,
        Split(x_test, y_test),
        str(root),
        val_fraction=val_fraction,
        seed=seed,
        limit_to=limit,
        where=str(root),
        test_origin="sign_mnist_test.csv",
    )


def _read_sign_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse one Kaggle CSV with NumPy's C parser (27,455 rows in about a second).

    Row-by-row checks in Python only run after the fast parse fails, to say which row is bad.
    """
    text = read_bytes(path).decode("ascii", errors="replace")
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
    return f"could not parse the rows ({one_line(exc)})"
