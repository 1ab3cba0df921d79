"""Two-phase training into a run folder; ``handserve train``.

``handserve train --config configs/sign_mnist.yaml --epochs 12`` trains, evaluates and writes
``runs/NAME/`` (layout in docs/architecture.md). Phase 1 trains the head on a frozen backbone
(baselines: everything); phase 2, for pretrained backbones with ``fine_tune_epochs > 0``,
unfreezes the top of the backbone at a lower learning rate. The run is written into
``runs/.NAME.partial`` and renamed only when complete, so a folder without ``.partial`` is
always finished; on any failure the partial folder is removed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import logging
import math
import platform
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

import handserve
from handserve import artifacts, configs
from handserve.artifacts import ArtifactError
from handserve.configs import ConfigError
from training import augment as augment_mod
from training import evaluate as evaluate_mod
from training import model as model_mod
from training.config import TrainConfig

log = logging.getLogger(__name__)

#: Files every finished run folder holds (docs/architecture.md).
RUN_FILES = (
    "config.json",
    "dataset.json",
    "environment.json",
    "history.json",
    "metrics.json",
    "confusion_matrix.png",
    "learning_curves.png",
    "labels.txt",
    "model.keras",
    "backbone.json",
    "samples.npz",
    "calibration.npz",
)
#: Best-by-val_loss model written during training when ``cfg.checkpoint`` is on.
CHECKPOINT = "checkpoint.keras"
N_SAMPLES = 512
N_CALIBRATION = 256


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced."""

    run_dir: Path
    metrics: dict[str, Any]
    export_dir: Path | None = None


# --------------------------------------------------------------------------- setup


def set_seeds(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow and make TF ops deterministic.

    With op determinism a fixed seed gives identical metrics twice on CPU; the price is a few
    percent of speed, worth it for runs that can be compared.
    """
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def _strategy_and_precision(cfg: TrainConfig) -> tf.distribute.Strategy:
    """MirroredStrategy on >1 GPU; mixed float16 only where a GPU can use it."""
    gpus = tf.config.list_physical_devices("GPU")
    if cfg.mixed_precision:
        if gpus:
            keras.mixed_precision.set_global_policy("mixed_float16")
            log.info("mixed precision: mixed_float16 on %d GPU(s)", len(gpus))
        else:
            log.warning("mixed_precision ignored: no GPU visible (float16 is slower on CPU)")
    if len(gpus) > 1:
        log.info("MirroredStrategy over %d GPUs", len(gpus))
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _optimizer(cfg: TrainConfig, lr: float | keras.optimizers.schedules.LearningRateSchedule):
    name = cfg.optimizer
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=lr)
    if name == "momentum":
        return keras.optimizers.SGD(learning_rate=lr, momentum=cfg.momentum)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=lr)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=lr)
    if name == "adagrad":
        return keras.optimizers.Adagrad(learning_rate=lr)
    if name == "adadelta":
        return keras.optimizers.Adadelta(learning_rate=lr)
    raise ConfigError(f"unknown optimizer {name!r} (--optimizer)")


def learning_rate_schedule(
    cfg: TrainConfig, base_lr: float, epochs: int, steps_per_epoch: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """Per-step schedule over ``epochs``: constant, cosine to zero, or step decay per epochs."""
    if cfg.schedule == "constant":
        return base_lr
    if cfg.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            base_lr, decay_steps=max(1, epochs * steps_per_epoch)
        )
    return keras.optimizers.schedules.ExponentialDecay(
        base_lr,
        decay_steps=max(1, cfg.step_epochs * steps_per_epoch),
        decay_rate=cfg.step_gamma,
        staircase=True,
    )


def class_weights(y: np.ndarray, num_classes: int) -> dict[int, float]:
    """``n / (k * count_c)`` per present class, as scikit-learn's "balanced" does."""
    counts = np.bincount(y, minlength=num_classes)
    present = int((counts > 0).sum())
    return {
        int(c): float(len(y) / (present * counts[c])) for c in range(num_classes) if counts[c] > 0
    }


#: Training steps after which BatchNorm moving statistics (Keras momentum 0.99) have settled:
#: 0.99**500 < 0.7%, so less than 1% of the initial (mean 0, variance 1) statistics remains.
BN_SETTLE_STEPS = 500


def early_stopping_start(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """First epoch of phase 1 at which early stopping may act.

    Until BatchNorm statistics settle, a fresh network's validation loss is far worse than its
    weights (on the embedded digits it rose for 8 epochs while training loss fell), so early
    stopping would keep an epoch-1 model. Wait ``early_stopping_start`` epochs and at least
    :data:`BN_SETTLE_STEPS` steps; phase 2 starts settled and does not wait.
    """
    return max(cfg.early_stopping_start, math.ceil(BN_SETTLE_STEPS / max(1, steps_per_epoch)))


# --------------------------------------------------------------------------- callbacks


class EpochLog(keras.callbacks.Callback):
    """Records seconds, learning rate and phase per epoch and logs one summary line."""

    def __init__(self, phase: int, n_train: int, records: list[dict[str, Any]]) -> None:
        super().__init__()
        self.phase = phase
        self.n_train = n_train
        self.records = records
        self._start = 0.0
        self._lr = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        # The rate the epoch starts with: what a reader of the log expects to see.
        self._lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        seconds = time.perf_counter() - self._start
        logs = dict(logs or {})
        lr = self._lr
        record = {
            "epoch": epoch + 1,
            "phase": self.phase,
            "loss": _num(logs.get("loss")),
            "accuracy": _num(logs.get("accuracy")),
            "val_loss": _num(logs.get("val_loss")),
            "val_accuracy": _num(logs.get("val_accuracy")),
            "learning_rate": lr,
            "seconds": round(seconds, 3),
            "images_per_s": round(self.n_train / seconds, 1) if seconds > 0 else None,
        }
        self.records.append(record)
        log.info(
            "epoch %d (phase %d): loss %.4f acc %.4f val_loss %.4f val_acc %.4f lr %.2e "
            "%.1fs %.0f img/s",
            record["epoch"],
            self.phase,
            record["loss"] or 0,
            record["accuracy"] or 0,
            record["val_loss"] or 0,
            record["val_accuracy"] or 0,
            lr,
            seconds,
            record["images_per_s"] or 0,
        )


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


# --------------------------------------------------------------------------- run folder


def _run_name(cfg: TrainConfig, runs_dir: Path) -> str:
    if cfg.run_name:
        name = cfg.run_name
        if "/" in name or name.startswith(".") or not name.strip():
            raise ConfigError(f"run_name {name!r} must be a plain folder name (--run-name)")
        if (runs_dir / name).exists():
            raise ConfigError(f"{runs_dir / name}: run folder exists; choose another --run-name")
        return name
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = f"{cfg.dataset}-{cfg.backbone}-{stamp}"
    name, i = base, 2
    while (runs_dir / name).exists() or (runs_dir / f".{name}.partial").exists():
        name, i = f"{base}-{i}", i + 1
    return name


@contextlib.contextmanager
def partial_run_dir(runs_dir: Path, name: str) -> Iterator[Path]:
    """Yield ``runs/.NAME.partial``; rename to ``runs/NAME`` on success, delete on any failure."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    partial = runs_dir / f".{name}.partial"
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir()
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    final = runs_dir / name
    partial.rename(final)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")


def environment() -> dict[str, str]:
    """Library versions saved beside every run, so a result can be reproduced."""
    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "handserve": handserve.__version__,
        "platform": platform.platform(),
    }


def _dataset_info(ds: Any) -> dict[str, Any]:
    shape = [int(v) for v in ds.input_shape]
    return {
        "name": ds.name,
        "source": str(ds.source),
        "class_names": list(ds.class_names),
        "input_shape": shape,
        "color_mode": "grayscale" if shape[-1] == 1 else "rgb",
        "sizes": {
            "train": len(ds.train.y),
            "val": len(ds.val.y),
            "test": 0 if ds.test is None else len(ds.test.y),
        },
        "skipped": int(getattr(ds, "skipped", 0)),
    }


def _subsample(x: np.ndarray, y: np.ndarray | None, n: int, seed: int):
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.permutation(len(x))[:n])
    return x[idx], (None if y is None else y[idx])


# --------------------------------------------------------------------------- training


def _fit_phase(
    model: keras.Model,
    cfg: TrainConfig,
    *,
    phase: int,
    train_ds: tf.data.Dataset,
    val_ds: tf.data.Dataset,
    n_train: int,
    initial_epoch: int,
    epochs: int,
    base_lr: float,
    steps_per_epoch: int,
    loss: keras.losses.Loss,
    weights: dict[int, float] | None,
    records: list[dict[str, Any]],
    run_dir: Path,
    best_so_far: float | None,
    verbose: int,
) -> float | None:
    """Compile and fit one phase; returns the best val_loss seen (for the next checkpoint)."""
    schedule = learning_rate_schedule(cfg, base_lr, epochs, steps_per_epoch)
    model.compile(optimizer=_optimizer(cfg, schedule), loss=loss, metrics=["accuracy"])
    callbacks: list[keras.callbacks.Callback] = [EpochLog(phase, n_train, records)]
    if cfg.early_stopping > 0:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss",
                patience=cfg.early_stopping,
                restore_best_weights=True,
                start_from_epoch=early_stopping_start(cfg, steps_per_epoch) if phase == 1 else 0,
            )
        )
    if cfg.checkpoint:
        callbacks.append(
            keras.callbacks.ModelCheckpoint(
                str(run_dir / CHECKPOINT),
                monitor="val_loss",
                save_best_only=True,
                initial_value_threshold=best_so_far,
                verbose=0,
            )
        )
    log.info(
        "phase %d: %d epochs, %s lr %.2e (%s), %d trainable weights",
        phase,
        epochs,
        cfg.optimizer,
        base_lr,
        cfg.schedule,
        len(model.trainable_weights),
    )
    history = model.fit(
        train_ds,
        validation_data=val_ds,
        initial_epoch=initial_epoch,
        epochs=initial_epoch + epochs,
        class_weight=weights,
        callbacks=callbacks,
        shuffle=False,  # the pipeline shuffles (seeded); Keras cannot shuffle a tf.data anyway
        verbose=verbose,
    )
    losses = [v for v in history.history.get("val_loss", []) if v is not None]
    best = min(losses) if losses else None
    if best_so_far is not None and best is not None:
        best = min(best, best_so_far)
    return best


def train(cfg: TrainConfig, *, verbose: int | None = None) -> TrainResult:
    """Train ``cfg``, evaluate, write the run folder and (if ``cfg.export``) export it.

    Args:
        cfg: the resolved configuration.
        verbose: Keras' fit verbosity; default 1 (a bar) on a terminal, else 2 (a line).

    Returns:
        The finished run folder and its metrics.

    Raises:
        DataError, ConfigError, ModelError: bad data, config, backbone or weights; no finished
            run folder is left behind.
    """
    from training import data  # the stage upstream; imported here so --list-backbones is quick

    if verbose is None:
        verbose = 1 if sys.stderr.isatty() else 2
    runs_dir = Path(cfg.runs_dir)
    name = _run_name(cfg, runs_dir)
    set_seeds(cfg.seed)
    spec = model_mod.get_spec(cfg.backbone)  # fail on a bad name before loading data
    dataset = data.load_dataset(cfg)
    log.info(
        "dataset %s: %d train, %d val, %s test, %d classes, input %s",
        dataset.name,
        len(dataset.train.y),
        len(dataset.val.y),
        "no" if dataset.test is None else len(dataset.test.y),
        dataset.num_classes,
        tuple(dataset.input_shape),
    )
    if len(dataset.val.y) == 0:
        raise ConfigError("validation split is empty; raise --val-fraction or --limit")
    # The export name is checked (in config) or derived now, so --export cannot fail on it late.
    export_name = cfg.export_name or artifacts.slugify(dataset.name)
    policy = keras.mixed_precision.global_policy().name
    try:
        with partial_run_dir(runs_dir, name) as run_dir:
            metrics = _train_into(cfg, dataset, spec, run_dir, data, verbose)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    final = runs_dir / name
    log.info(
        "run %s: val accuracy %.4f, test accuracy %s, %.0f training images/s",
        final,
        metrics["val"]["accuracy"],
        "n/a" if metrics["test"] is None else f"{metrics['test']['accuracy']:.4f}",
        metrics["train_images_per_s"],
    )
    export_dir = None
    if cfg.export:
        from training.export import export_run  # written by the export stage

        export_dir = export_run(final, Path(cfg.models_dir), export_name)
        log.info("exported to %s", export_dir)
    return TrainResult(final, metrics, export_dir)


def _train_into(
    cfg: TrainConfig,
    dataset: Any,
    spec: model_mod.BackboneSpec,
    run_dir: Path,
    data: Any,
    verbose: int,
) -> dict[str, Any]:
    """Everything that writes into the partial run folder."""
    strategy = _strategy_and_precision(cfg)
    num_classes = dataset.num_classes
    n_train = len(dataset.train.y)
    batch = cfg.batch_size
    steps_per_epoch = math.ceil(n_train / batch)
    augment = augment_mod.build_augmentation(cfg)
    train_ds = data.make_pipeline(
        dataset.train, batch, training=True, seed=cfg.seed, augment=augment
    )
    val_ds = data.make_pipeline(dataset.val, batch, training=False, seed=cfg.seed)
    if cfg.label_smoothing > 0:
        # Keras' sparse cross-entropy has no label smoothing: one-hot the labels instead.
        def one_hot(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return x, tf.one_hot(tf.cast(y, tf.int32), num_classes)

        train_ds = train_ds.map(one_hot, num_parallel_calls=tf.data.AUTOTUNE)
        val_ds = val_ds.map(one_hot, num_parallel_calls=tf.data.AUTOTUNE)
        loss: keras.losses.Loss = keras.losses.CategoricalCrossentropy(
            label_smoothing=cfg.label_smoothing
        )
    else:
        loss = keras.losses.SparseCategoricalCrossentropy()
    weights = (
        class_weights(dataset.train.y, num_classes) if cfg.class_weights == "balanced" else None
    )

    with strategy.scope():
        model = model_mod.build_model(cfg, tuple(dataset.input_shape), num_classes)
    records: list[dict[str, Any]] = []
    common = dict(
        train_ds=train_ds,
        val_ds=val_ds,
        n_train=n_train,
        steps_per_epoch=steps_per_epoch,
        loss=loss,
        weights=weights,
        records=records,
        run_dir=run_dir,
        verbose=verbose,
    )
    with strategy.scope():
        best = _fit_phase(
            model,
            cfg,
            phase=1,
            initial_epoch=0,
            epochs=cfg.epochs,
            base_lr=cfg.learning_rate,
            best_so_far=None,
            **common,
        )
    if not model_mod.is_from_scratch(cfg) and cfg.fine_tune_epochs > 0:
        done = len(records)
        with strategy.scope():
            model_mod.unfreeze(model, cfg.fine_tune_layers)
            phase2_best = _fit_phase(
                model,
                cfg,
                phase=2,
                initial_epoch=done,
                epochs=cfg.fine_tune_epochs,
                base_lr=cfg.learning_rate * cfg.fine_tune_lr_factor,
                best_so_far=best,
                **common,
            )
        # Early stopping restores the best weights of phase 2 only; when fine-tuning never beat
        # phase 1, the checkpoint (the best over both phases) holds the better model.
        ckpt = run_dir / CHECKPOINT
        phase2_losses = [r["val_loss"] for r in records[done:] if r["val_loss"] is not None]
        if (
            cfg.early_stopping > 0
            and ckpt.is_file()
            and best is not None
            and phase2_losses
            and min(phase2_losses) > best
            and phase2_best is not None
        ):
            log.info("fine-tuning did not improve val_loss %.4f: keeping the phase-1 model", best)
            model.load_weights(ckpt)
    elif cfg.fine_tune_epochs > 0:
        log.info("fine_tune_epochs ignored: %s from scratch trains fully in phase 1", spec.name)

    # The report: metrics on the restored best weights, then the contract's files.
    metrics = evaluate_mod.compute_metrics(model, dataset, batch_size=max(batch, 128))
    seconds = sum(r["seconds"] for r in records)
    metrics["train_images_per_s"] = round(n_train * len(records) / seconds, 1) if seconds else 0.0
    # Epoch 1 includes graph tracing; the median of later epochs is the steady-state speed.
    later = [r["images_per_s"] for r in records[1:] if r["images_per_s"]] or [
        r["images_per_s"] for r in records if r["images_per_s"]
    ]
    metrics["train_images_per_s_steady"] = round(float(np.median(later)), 1) if later else 0.0
    metrics["train_seconds"] = round(seconds, 2)
    metrics["epochs_run"] = len(records)
    metrics["seconds_per_epoch"] = round(seconds / len(records), 2) if records else 0.0
    finite = [r for r in records if r["val_loss"] is not None]
    if finite:
        best_rec = min(finite, key=lambda r: r["val_loss"])
        metrics["best_epoch"] = best_rec["epoch"]
    # Early stopping restores the best weights; without it the model is the last epoch's.
    metrics["weights_from"] = "best epoch" if cfg.early_stopping > 0 else "last epoch"
    confusion = metrics.pop("confusion_matrix")

    model.save(run_dir / "model.keras")
    _write_json(run_dir / "config.json", configs.to_dict(cfg))
    _write_json(run_dir / "dataset.json", _dataset_info(dataset))
    _write_json(run_dir / "environment.json", environment())
    _write_json(run_dir / "history.json", {"epochs": records})
    _write_json(run_dir / "metrics.json", metrics)
    _write_json(
        run_dir / "backbone.json",
        {
            "name": spec.name,
            "weights": model_mod.weights_label(cfg),
            "backbone_size": model_mod.resolve_backbone_size(cfg, spec),
            "augmentation": augment_mod.describe(cfg),
        },
    )
    (run_dir / "labels.txt").write_text("".join(f"{c}\n" for c in dataset.class_names))
    evaluate_mod.plot_confusion_matrix(
        np.asarray(confusion),
        dataset.class_names,
        run_dir / "confusion_matrix.png",
        title=f"{dataset.name} {metrics['per_class']['split']} split",
    )
    evaluate_mod.plot_learning_curves(records, run_dir / "learning_curves.png")
    sample_split = dataset.test if dataset.test is not None else dataset.val
    sx, sy = _subsample(sample_split.x, sample_split.y, N_SAMPLES, cfg.seed)
    np.savez_compressed(run_dir / "samples.npz", x=sx, y=sy)
    cx, _ = _subsample(dataset.train.x, None, N_CALIBRATION, cfg.seed + 1)
    np.savez_compressed(run_dir / "calibration.npz", x=cx)
    missing = [f for f in RUN_FILES if not (run_dir / f).is_file()]
    if missing:  # a bug, not a user error: never publish an incomplete run
        raise RuntimeError(f"run folder incomplete, missing {missing}")
    return metrics


# --------------------------------------------------------------------------- CLI


def configure(parser: argparse.ArgumentParser) -> None:
    """``handserve train`` flags: ``--config FILE``, one flag per TrainConfig field."""
    parser.add_argument("--config", type=Path, default=None, help="YAML/TOML/JSON config file")
    parser.add_argument(
        "--list-backbones", action="store_true", help="list the backbone names and exit"
    )
    configs.add_arguments(parser, TrainConfig)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``handserve train``; prints the run folder and report on stdout."""
    from training.data import DataError
    from training.export import ExportError

    if args.list_backbones:
        _say(model_mod.list_backbones())
        return 0
    try:
        cfg = configs.load(TrainConfig, args.config, configs.overrides_from_args(args, TrainConfig))
        # Keras writes progress to stdout; keep stdout for the result lines scripts read.
        with contextlib.redirect_stdout(sys.stderr):
            result = train(cfg)
    except (DataError, ConfigError, ArtifactError, ExportError) as exc:
        # The run folder is finished and kept when only --export failed; say where it is.
        _say(f"error: {exc}", err=True)
        return 2
    _say(f"run: {result.run_dir}")
    _say(f"report: {result.run_dir / 'metrics.json'}")
    if result.export_dir is not None:
        _say(f"export: {result.export_dir}")
    return 0


def _say(text: str, *, err: bool = False) -> None:
    """CLI output: results on stdout (scripts read them), errors on stderr."""
    print(text, file=sys.stderr if err else sys.stdout)
