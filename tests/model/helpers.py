"""Small shared helpers for the model tests: tiny configs and tiny synthetic splits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from training import model as model_mod
from training.config import TrainConfig


def tiny_cfg(tmp_path: Any = None, **overrides: Any) -> TrainConfig:
    """A config for a seconds-long run on embedded digits."""
    values: dict[str, Any] = {
        "dataset": "digits",
        "backbone": "cnn",
        "weights": "none",
        "limit": 200,
        "epochs": 1,
        "batch_size": 32,
        "early_stopping": 0,
        "seed": 3,
    }
    if tmp_path is not None:
        values["runs_dir"] = str(tmp_path / "runs")
    values.update(overrides)
    return TrainConfig(**values)


def images(n: int, shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Random float32 images 0-255 of ``shape``."""
    return np.random.default_rng(seed).uniform(0, 255, size=(n, *shape)).astype("float32")


def fake_pretrained_weights(backbone: str, size: int, path: Path) -> Path:
    """Save a randomly initialised keras.applications backbone's weights to ``path``.

    Stands in for an ImageNet file offline: build_model treats any weights file as pretrained
    (frozen in phase 1, fine-tuned in phase 2), which is what the tests of that path need.
    """
    if not path.exists():
        spec = model_mod.get_spec(backbone)
        assert spec.factory is not None
        net = spec.factory(
            include_top=False, weights=None, input_shape=(size, size, 3), **dict(spec.extra)
        )
        net.save_weights(path)
    return path


def has_augmentation(model: Any) -> list[str]:
    """Names of any random (augmentation) layers in ``model``, searched recursively."""
    return [
        layer.name
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if type(layer).__name__.startswith("Random")
    ]
