"""The augmentation block, applied in the ``tf.data`` training pipeline only.

It is never part of the model: Keras 3.15 keeps random layers active in an exported
SavedModel, so the same image would get a different answer on every request. Keeping it here,
handed to ``training.data.make_pipeline(..., augment=...)``, makes that mistake impossible.
"""

from __future__ import annotations

import logging

import keras
import tensorflow as tf

from training.config import TrainConfig

log = logging.getLogger(__name__)


def build_augmentation(cfg: TrainConfig) -> keras.Sequential | None:
    """Random geometric and photometric changes from ``cfg``; None when ``cfg.augment`` is off.

    Layers with a zero factor are left out. Each layer is seeded from ``cfg.seed`` so a run is
    reproducible. Edges are filled with the nearest pixel: black for digits, the backdrop for
    hands, never a reflected copy of a stroke. Horizontal flip only when ``cfg.flip`` (off by
    default): a mirrored hand can be another sign (or the other hand), a mirrored digit is not
    a digit.

    Args:
        cfg: uses ``augment``, ``rotation``, ``zoom``, ``translate``, ``contrast``,
            ``brightness``, ``flip`` and ``seed``.

    Returns:
        A ``keras.Sequential`` taking float32 images 0-255, or None.
    """
    if not cfg.augment:
        return None
    seed = cfg.seed
    layers: list[keras.layers.Layer] = []
    if cfg.flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if cfg.rotation > 0:
        layers.append(keras.layers.RandomRotation(cfg.rotation, fill_mode="nearest", seed=seed + 1))
    if cfg.zoom > 0:
        layers.append(keras.layers.RandomZoom(cfg.zoom, fill_mode="nearest", seed=seed + 2))
    if cfg.translate > 0:
        layers.append(
            keras.layers.RandomTranslation(
                cfg.translate, cfg.translate, fill_mode="nearest", seed=seed + 3
            )
        )
    if cfg.contrast > 0:
        layers.append(
            keras.layers.RandomContrast(cfg.contrast, value_range=(0, 255), seed=seed + 4)
        )
    if cfg.brightness > 0:
        layers.append(
            keras.layers.RandomBrightness(cfg.brightness, value_range=(0, 255), seed=seed + 5)
        )
    if not layers:
        return None
    log.debug("augmentation: %s", ", ".join(type(layer).__name__ for layer in layers))
    return keras.Sequential(layers, name="augmentation")


def with_mixup(ds: tf.data.Dataset, alpha: float, seed: int) -> tf.data.Dataset:
    """Blend each batch of ``(images, one-hot labels)`` with a shuffled copy of itself (MixUp).

    After the per-image augmentation and batching: MixUp pairs images within a batch. The
    pipeline's last batch may be smaller; the layer handles any batch size.
    """
    mixup = keras.layers.MixUp(alpha=alpha, seed=seed + 6)

    def mix(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        out = mixup({"images": x, "labels": y}, training=True)
        return out["images"], out["labels"]

    return ds.map(mix, num_parallel_calls=tf.data.AUTOTUNE)


def describe(cfg: TrainConfig) -> dict[str, float | bool]:
    """The augmentation settings in effect, for logs and the report."""
    return {
        "enabled": cfg.augment,
        "rotation": cfg.rotation,
        "zoom": cfg.zoom,
        "translate": cfg.translate,
        "contrast": cfg.contrast,
        "brightness": cfg.brightness,
        "flip": cfg.flip,
        "mixup": cfg.mixup,
    }
