"""A hand-built run folder: a tiny Keras classifier trained for seconds on synthetic images.

Export tests use it where they need a run that is not the shared ``tiny_run`` (a second model,
a broken run folder) and it documents the run folder contract in code: it writes every file
``docs/architecture.md`` lists, with the same types.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def synthetic_images(
    n: int, shape: tuple[int, int, int], classes: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Images whose class is a bright horizontal band at a class-specific height, plus noise.

    Easy to learn in a few epochs, so the model is confident and quantized parity is meaningful.
    """
    rng = np.random.default_rng(seed)
    h, w, c = shape
    y = rng.integers(0, classes, size=n)
    x = rng.integers(0, 60, size=(n, h, w, c)).astype(np.int64)
    band = max(1, h // classes)
    for i, label in enumerate(y):
        x[i, label * band : (label + 1) * band] += 180
    return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)


def make_run(
    run_dir: Path,
    *,
    shape: tuple[int, int, int] = (12, 12, 1),
    classes: int = 3,
    seed: int = 0,
    epochs: int = 8,
) -> Path:
    """Train a tiny CNN on synthetic data and write a complete run folder at ``run_dir``."""
    import keras

    keras.utils.set_random_seed(seed)
    x, y = synthetic_images(600, shape, classes, seed)
    x_test, y_test = synthetic_images(200, shape, classes, seed + 1)
    model = keras.Sequential(
        [
            keras.Input(shape),
            keras.layers.Rescaling(1 / 255.0),
            keras.layers.Conv2D(6, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(classes, activation="softmax"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="sparse_categorical_crossentropy")
    model.fit(x.astype("float32"), y, epochs=epochs, batch_size=32, verbose=0)
    test_acc = float(
        np.mean(np.argmax(model.predict(x_test.astype("float32"), verbose=0), 1) == y_test)
    )

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    labels = [f"class_{i}" for i in range(classes)]
    model.save(run_dir / "model.keras")
    (run_dir / "labels.txt").write_text("\n".join(labels) + "\n")
    _json(run_dir / "config.json", {"dataset": "synthetic", "backbone": "cnn", "epochs": epochs})
    color = "grayscale" if shape[2] == 1 else "rgb"
    _json(
        run_dir / "dataset.json",
        {
            "name": "synthetic",
            "source": "tests/export/handmade.py",
            "class_names": labels,
            "input_shape": list(shape),
            "color_mode": color,
            "sizes": {"train": 600, "val": 0, "test": 200},
            "skipped": 0,
        },
    )
    _json(run_dir / "environment.json", {"tensorflow": "?", "keras": keras.__version__})
    _json(run_dir / "history.json", {"epochs": []})
    _json(
        run_dir / "metrics.json",
        {"val": None, "test": {"loss": 0.0, "accuracy": test_acc}, "per_class": None},
    )
    _json(run_dir / "backbone.json", {"name": "cnn", "weights": "none", "backbone_size": None})
    np.savez_compressed(run_dir / "samples.npz", x=x_test, y=y_test)
    np.savez_compressed(run_dir / "calibration.npz", x=x[:128])
    return run_dir


def _json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
