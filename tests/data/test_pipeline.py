"""make_pipeline: batch shapes and dtypes, seeded shuffling, augmentation only when training."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from training.data import Split, make_pipeline


@pytest.fixture
def split() -> Split:
    n = 10
    x = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 1), np.uint8)
    return Split(x, np.arange(n, dtype=np.int64))


def _epoch(ds: tf.data.Dataset) -> np.ndarray:
    return np.concatenate([y.numpy() for _, y in ds])


class AddThousand(keras.layers.Layer):
    """A stand-in augmentation that is obvious in the output and records how it was called."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[object] = []

    def call(self, x, training=None):
        self.calls.append(training)
        return x + 1000.0 if training else x


def test_batches_shapes_and_dtypes(split: Split) -> None:
    batches = list(make_pipeline(split, 4, training=False, seed=0))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    x, y = batches[0]
    assert x.shape == (4, 4, 4, 1) and x.dtype == tf.float32
    assert y.dtype == tf.int64
    np.testing.assert_array_equal(x.numpy()[:, 0, 0, 0], [0.0, 1.0, 2.0, 3.0])


def test_no_shuffle_when_not_training(split: Split) -> None:
    ds = make_pipeline(split, 3, training=False, seed=0)
    np.testing.assert_array_equal(_epoch(ds), np.arange(10))
    np.testing.assert_array_equal(_epoch(ds), np.arange(10))


def test_training_shuffles_deterministically_and_reshuffles(split: Split) -> None:
    a = make_pipeline(split, 3, training=True, seed=1)
    b = make_pipeline(split, 3, training=True, seed=1)
    first = _epoch(a)
    assert sorted(first) == list(range(10))
    np.testing.assert_array_equal(first, _epoch(b))
    assert not np.array_equal(first, np.arange(10))
    epochs = [first] + [_epoch(a) for _ in range(3)]
    assert any(not np.array_equal(first, e) for e in epochs[1:])  # reshuffled each epoch
    other = _epoch(make_pipeline(split, 3, training=True, seed=2))
    assert not np.array_equal(first, other)


def test_images_follow_their_labels_through_the_shuffle(split: Split) -> None:
    for x, y in make_pipeline(split, 4, training=True, seed=3):
        np.testing.assert_array_equal(x.numpy()[:, 0, 0, 0], y.numpy().astype(np.float32))


def test_augmentation_only_when_training(split: Split) -> None:
    aug = AddThousand()
    train = make_pipeline(split, 5, training=True, seed=0, augment=aug)
    for x, y in train:
        np.testing.assert_array_equal(x.numpy()[:, 0, 0, 0], y.numpy() + 1000.0)
    assert aug.calls and all(t is True for t in aug.calls)
    evaluation = make_pipeline(split, 5, training=False, seed=0, augment=aug)
    np.testing.assert_array_equal(
        np.concatenate([x.numpy()[:, 0, 0, 0] for x, _ in evaluation]), np.arange(10.0)
    )


def test_fresh_augmentation_each_epoch(split: Split) -> None:
    """Random augmentation runs after the cache, so epochs differ even in the same order."""
    noise = keras.layers.GaussianNoise(1.0, seed=0)
    ds = make_pipeline(split, 10, training=True, seed=0, augment=noise)
    x1, y1 = next(iter(ds))
    x2, y2 = next(iter(ds))
    order1, order2 = np.argsort(y1.numpy()), np.argsort(y2.numpy())
    assert not np.allclose(x1.numpy()[order1], x2.numpy()[order2])


def test_empty_split() -> None:
    empty = Split(np.zeros((0, 4, 4, 1), np.uint8), np.zeros(0, np.int64))
    assert list(make_pipeline(empty, 4, training=True, seed=0)) == []
