"""Datasets as in-memory ``uint8`` arrays, and the ``tf.data`` pipelines that feed them to Keras.

One interface, four sources: every source module has a ``from_config(cfg) -> Dataset`` and
:func:`load_dataset` picks it by ``cfg.dataset``, so the rest of training never cares where the
images came from.

=====================  ========================================================================
``digits``             the embedded scikit-learn digits (the offline default)
``mnist``              MNIST IDX files, an ``mnist.npz`` or Keras' download
``sign_mnist``         Sign Language MNIST (the Kaggle CSVs)
``folder``             folders of images, decoded by :mod:`handserve.images` like served ones
=====================  ========================================================================

:mod:`training.data.splits` holds every split (seeded and stratified, so the same config gives
the same train/val/test images); :mod:`training.data.pipeline` the ``tf.data`` pipeline. Bad
input stops with a one-line :class:`DataError` naming the file, row or flag to fix, before any
training time is spent.

Importing this package imports no TensorFlow (about 10 s here): ``make_pipeline`` is loaded on
first use, so the loaders, the CLI's checks and the tests that only need arrays start at once
(tests/unit/test_layout.py checks it in a fresh interpreter).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from training.config import TrainConfig
from training.data import digits, folder, mnist, sign_mnist
from training.data.base import DataError, Dataset, Split
from training.data.digits import load_digits
from training.data.folder import load_folder
from training.data.mnist import load_mnist
from training.data.sign_mnist import load_sign_mnist

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

if TYPE_CHECKING:
    from training.data.pipeline import make_pipeline


def __getattr__(name: str) -> Any:
    """``make_pipeline`` on first use: :mod:`training.data.pipeline` is the TensorFlow part."""
    if name == "make_pipeline":
        from training.data.pipeline import make_pipeline

        return make_pipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: ``cfg.dataset`` -> the source that loads it: one per value of training.config.Dataset
#: (tests/unit/test_config.py checks they agree).
SOURCES: dict[str, Callable[[TrainConfig], Dataset]] = {
    "digits": digits.from_config,
    "mnist": mnist.from_config,
    "sign_mnist": sign_mnist.from_config,
    "folder": folder.from_config,
}


def load_dataset(cfg: TrainConfig) -> Dataset:
    """Load the dataset ``cfg.dataset`` names, split and limited as ``cfg`` says.

    Raises:
        DataError: the data is missing or malformed (the message says what to fix).
    """
    source = SOURCES.get(cfg.dataset)
    if source is None:
        raise DataError(f"unknown dataset {cfg.dataset!r}: use one of {', '.join(SOURCES)}")
    dataset = source(cfg)
    if dataset.crop != cfg.hand_crop:
        # Sign MNIST's images are already hand crops (the rule keeps 28x28 images whole): the
        # crop is only the contract's, telling servers and apps to crop real photos.
        dataset = dataclasses.replace(dataset, crop=cfg.hand_crop)
    return dataset
