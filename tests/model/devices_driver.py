"""Run by tests/model/test_devices.py in a fresh process: the CPU can be split into logical
devices only before TensorFlow initialises, which it has long done in the test process.

    python -m tests.model.devices_driver OUT_DIR

Trains the tiny model with ``devices=2`` (MirroredStrategy over two logical CPUs, MixUp on),
exports it, and writes ``OUT_DIR/result.json``: the run's metrics and history, the version's
path, and the predictions of the saved model on the run's samples computed by the strategy
across both replicas; then fits a phase-2 run (recompile, EMA, checkpoint) under the strategy.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np


def main(out: Path) -> int:
    logging.basicConfig(level=logging.INFO)  # the strategy's log line is checked
    import keras
    import tensorflow as tf

    from training import fitting
    from training.config import TrainConfig
    from training.data import load_dataset
    from training.export import export_run
    from training.train import train

    cfg = TrainConfig(
        dataset="digits",
        backbone="cnn",
        weights="none",
        limit=400,
        epochs=6,
        batch_size=32,
        learning_rate=5e-3,
        early_stopping=0,
        mixup=0.1,
        seed=7,
        devices="2",
        runs_dir=str(out / "runs"),
        run_name="two",
    )
    result = train(cfg, verbose=0)
    assert len(tf.config.list_logical_devices("CPU")) == 2
    run = result.run_dir
    version = export_run(run, out / "models", "two")  # what `handserve train --export` does
    samples = np.load(run / "samples.npz")
    strategy = tf.distribute.MirroredStrategy(devices=["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = keras.models.load_model(run / "model.keras", compile=False)
    batches = tf.data.Dataset.from_tensor_slices(samples["x"].astype("float32")).batch(32)
    distributed = model.predict(batches, verbose=0)

    # Phase 2 under the strategy: recompile, EMA swapped in, a checkpoint written.
    cfg2 = TrainConfig(**{**cfg.model_dump(), "ema": 0.9, "run_name": "phase2"})
    dataset = load_dataset(cfg2)
    inputs = fitting.fit_inputs(cfg2, dataset)
    with strategy.scope():
        tuned = keras.models.load_model(run / "model.keras", compile=False)
        checkpoint = out / "phase2.keras"
        best = fitting.fit_phase(
            tuned,
            cfg2,
            fitting.Phase(2, 2, 1e-3, 6),
            inputs,
            records=(records := []),
            checkpoint=checkpoint,
            verbose=0,
        )
    (out / "result.json").write_text(
        json.dumps(
            {
                "metrics": result.metrics,
                "history": json.loads((run / "history.json").read_text())["epochs"],
                "version": str(version),
                "distributed": distributed.tolist(),
                "phase2": {"best_val_loss": best, "epochs": len(records)},
                "checkpoint": checkpoint.is_file(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
