"""Augmentation: changes training images in the pipeline, never the evaluation pipeline."""

from __future__ import annotations

import keras
import numpy as np

from training import data
from training.augment import build_augmentation

from .helpers import tiny_cfg


def _split(n: int = 16) -> data.Split:
    rng = np.random.default_rng(0)
    x = np.zeros((n, 28, 28, 1), dtype=np.uint8)
    x[:, 8:20, 10:18] = rng.integers(100, 255, size=(n, 12, 8, 1), dtype=np.uint8)
    return data.Split(x=x, y=np.arange(n, dtype=np.int64) % 4)


def _images(ds) -> np.ndarray:
    return np.concatenate([np.asarray(x) for x, _ in ds])


def test_augmentation_changes_training_images() -> None:
    split = _split()
    aug = build_augmentation(tiny_cfg())
    assert aug is not None
    out = _images(data.make_pipeline(split, 16, training=True, seed=1, augment=aug))
    assert out.shape == split.x.shape and out.dtype == np.float32
    # Shuffling alone keeps the multiset of images; augmentation must change pixels.
    changed = ~np.isclose(
        np.sort(out.reshape(16, -1).sum(1)), np.sort(split.x.reshape(16, -1).sum(1))
    )
    assert changed.sum() >= 8
    assert out.min() >= 0 and out.max() <= 255.0 + 1e-3


def test_pipelines_without_augmentation_keep_images() -> None:
    split = _split()
    aug = build_augmentation(tiny_cfg())
    evaluation = _images(data.make_pipeline(split, 5, training=False, seed=1, augment=aug))
    np.testing.assert_array_equal(evaluation, split.x.astype("float32"))
    shuffled = _images(data.make_pipeline(split, 5, training=True, seed=1, augment=None))
    np.testing.assert_array_equal(
        np.sort(shuffled.reshape(16, -1).sum(1)), np.sort(split.x.reshape(16, -1).sum(1))
    )


def test_flip_only_when_enabled_and_none_when_off() -> None:
    def names(cfg) -> list[str]:
        aug = build_augmentation(cfg)
        return [type(layer).__name__ for layer in aug.layers] if aug else []

    assert "RandomFlip" not in names(tiny_cfg(dataset="sign_mnist"))
    assert "RandomFlip" not in names(tiny_cfg(dataset="folder"))  # hands: off unless asked
    assert "RandomFlip" in names(tiny_cfg(dataset="folder", flip=True))
    assert build_augmentation(tiny_cfg(augment=False)) is None
    aug = build_augmentation(tiny_cfg())
    assert aug is not None
    brightness = [la for la in aug.layers if isinstance(la, keras.layers.RandomBrightness)]
    assert brightness and tuple(brightness[0].value_range) == (0, 255)


def test_mixup_blends_images_and_labels_alike() -> None:
    """Every training example is ``w * a + (1 - w) * b`` of two examples, labels included.

    The labels tell the weight: ``a``'s class gets ``w``, so the image must be the same blend.
    """
    from training.fitting import fit_inputs

    keras.utils.set_random_seed(0)  # MixUp draws its weights from the global seed
    split = _split(32)
    dataset = data.Dataset("test", ["a", "b", "c", "d"], split, split, None, "test")
    cfg = tiny_cfg(mixup=0.4, rotation=0, zoom=0, translate=0, contrast=0, brightness=0)
    inputs = fit_inputs(cfg, dataset)
    x, y = next(iter(inputs.train_ds))
    x, y = np.asarray(x), np.asarray(y)
    assert isinstance(inputs.loss, keras.losses.CategoricalCrossentropy)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, atol=1e-5)
    blended = [i for i in range(len(y)) if 0.02 < y[i].max() < 0.98]
    # Beta(0.4, 0.4) gives w within 0.02 of 0 or 1 about a quarter of the time, and a pair of
    # one class has a one-hot label: expect about two thirds blended (16 of 32 was seen once)
    assert len(blended) > len(y) // 4
    originals = split.x.astype(np.float32)
    for i in blended:
        # Find the pair (a, b) and weight that rebuild image i: one must fit exactly.
        errors = [
            np.abs(w * originals[a] + (1 - w) * originals[b] - x[i]).max()
            for a in range(len(split))
            for b in range(len(split))
            if y[i][split.y[a]] >= 0.5 - 1e-6 and split.y[a] != split.y[b]
            for w in (float(y[i][split.y[a]]),)
        ]
        assert min(errors) < 1e-2
