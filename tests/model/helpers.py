"""Small shared helpers for the model tests: tiny configs and tiny synthetic splits."""

from __future__ import annotations

from typing import Any

import numpy as np

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
