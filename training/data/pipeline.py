"""The ``tf.data`` pipeline that feeds a :class:`Split` to Keras (the only TensorFlow here)."""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from training.data.base import Split


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
