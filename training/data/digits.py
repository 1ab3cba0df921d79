"""The embedded scikit-learn digits: real handwriting with no download (the default dataset)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from handserve.images import ImageSpec, to_array
from training.config import TrainConfig
from training.data import splits
from training.data.base import MNIST_SIZE, Dataset, Split

#: The embedded digits have no official test set: this share is held out as one (seeded).
DIGITS_TEST_FRACTION = 0.2


def from_config(cfg: TrainConfig) -> Dataset:
    return load_digits(val_fraction=cfg.val_fraction, seed=cfg.seed, limit=cfg.limit)


def load_digits(*, val_fraction: float = 0.1, seed: int = 42, limit: int | None = None) -> Dataset:
    """scikit-learn's 1,797 real handwritten 8x8 digits, upscaled to MNIST's 28x28 greyscale.

    Values 0-16 are scaled to 0-255, then resized by :func:`handserve.images.to_array` (bilinear),
    the code that resizes every served image; high values are ink, as in MNIST.
    ``DIGITS_TEST_FRACTION`` is held out (seeded, stratified) as the test split.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    small = np.round(np.asarray(bunch.images, dtype=np.float64) * (255.0 / 16.0))
    small = np.clip(small, 0, 255).astype(np.uint8)
    spec = ImageSpec(MNIST_SIZE, MNIST_SIZE, 1)
    x = np.stack([to_array(Image.fromarray(img), spec) for img in small])
    y = np.asarray(bunch.target, dtype=np.int64)
    pool, test = splits.hold_out(y, DIGITS_TEST_FRACTION, seed, splits.SALT_TEST)
    return splits.finish(
        "digits",
        [str(d) for d in range(10)],
        x[pool],
        y[pool],
        Split(x[test], y[test]),
        "embedded (scikit-learn load_digits)",
        val_fraction=val_fraction,
        seed=seed,
        limit_to=limit,
        where="scikit-learn digits",
        test_origin=f"{DIGITS_TEST_FRACTION:.0%} of the embedded digits, held out",
    )
