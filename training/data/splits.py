"""Seeded, stratified splits: the validation and test hold-outs and the ``--limit`` sample.

scikit-learn's ``train_test_split(..., stratify=y)`` does the work: the same seed always gives
the same images, and rare classes keep their share of each split. Each purpose has its own
random stream (a salt), so changing ``val_fraction`` never moves the test split.
"""

from __future__ import annotations

import numpy as np

from training.data.base import Dataset, Split, check_two_classes, log_summary

SALT_TEST, SALT_LIMIT, SALT_VAL = 1, 2, 3


def _split(y: np.ndarray, n_held: int, seed: int, salt: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted indices ``(keep, held)`` with ``n_held`` held out, stratified when possible.

    Stratification needs every class twice and room for one of each class on both sides; a
    tiny pool that has not (a quick ``--limit`` run) is split at random instead.
    """
    # Imported here: scikit-learn (with SciPy and pandas) costs seconds, and importing
    # training.data should not (tests/unit/test_imports.py).
    from sklearn.model_selection import train_test_split

    index = np.arange(len(y))
    counts = np.bincount(y)
    present = int((counts > 0).sum())
    can_stratify = counts[counts > 0].min() >= 2 and present <= min(n_held, len(y) - n_held)
    keep, held = train_test_split(
        index,
        test_size=n_held,
        random_state=np.random.RandomState(np.random.SeedSequence([seed, salt]).generate_state(1)),
        stratify=y if can_stratify else None,
    )
    return np.sort(keep), np.sort(held)


def hold_out(y: np.ndarray, fraction: float, seed: int, salt: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(keep, held)``: a seeded, stratified ``fraction`` held out, both sorted.

    At least one image is held out when ``fraction > 0`` and at least one is kept.
    """
    n = len(y)
    n_held = round(n * fraction)
    if fraction > 0 and n >= 2:
        n_held = min(max(1, n_held), n - 1)
    if n_held <= 0:
        return np.arange(n), np.zeros(0, dtype=np.int64)
    return _split(y, n_held, seed, salt)


def limit(y: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """Sorted indices of at most ``limit`` images, a seeded stratified sample."""
    if limit is None or limit >= len(y):
        return np.arange(len(y))
    _, kept = _split(y, limit, seed, SALT_LIMIT)
    return kept


def finish(
    name: str,
    class_names: list[str],
    x: np.ndarray,
    y: np.ndarray,
    test: Split | None,
    source: str,
    *,
    val_fraction: float,
    seed: int,
    limit_to: int | None,
    where: str,
    test_origin: str,
) -> Dataset:
    """Limit the training pool, hold out validation, and build the :class:`Dataset`."""
    check_two_classes(y, where)
    idx = limit(y, limit_to, seed)
    x, y = x[idx], y[idx]
    keep, held = hold_out(y, val_fraction, seed, SALT_VAL)
    dataset = Dataset(
        name=name,
        class_names=class_names,
        train=Split(x[keep], y[keep]),
        val=Split(x[held], y[held]),
        test=test,
        source=source,
        test_origin=test_origin,
    )
    log_summary(dataset, source)
    return dataset
