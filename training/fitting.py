"""Fitting a model in phases: inputs, optimizer, learning-rate schedule, callbacks, ``fit``.

Phase 1 trains the head on a frozen backbone (baselines and from-scratch nets: everything);
phase 2, for pretrained backbones (``fine_tune_epochs``, by default
:data:`training.config.DEFAULT_FINE_TUNE_EPOCHS`), unfreezes the top of the backbone at a lower
learning rate. :func:`fit_phases` runs both and leaves the model holding the
best weights either phase found; ``training.train`` calls it between loading and writing a run.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from sklearn.utils.class_weight import compute_class_weight

from handserve.configs import ConfigError
from training import augment as augment_mod
from training import model as model_mod
from training.config import DEFAULT_FINE_TUNE_EPOCHS, TrainConfig
from training.data import Dataset, make_pipeline

log = logging.getLogger(__name__)

#: One per value of training.config.Optimizer (tests/unit/test_config.py checks they agree).
OPTIMIZERS: dict[str, Any] = {
    "sgd": lambda lr, cfg, **kw: keras.optimizers.SGD(learning_rate=lr, **kw),
    "momentum": lambda lr, cfg, **kw: keras.optimizers.SGD(
        learning_rate=lr, momentum=cfg.momentum, **kw
    ),
    "adam": lambda lr, cfg, **kw: keras.optimizers.Adam(learning_rate=lr, **kw),
    "rmsprop": lambda lr, cfg, **kw: keras.optimizers.RMSprop(learning_rate=lr, **kw),
    "adagrad": lambda lr, cfg, **kw: keras.optimizers.Adagrad(learning_rate=lr, **kw),
    "adadelta": lambda lr, cfg, **kw: keras.optimizers.Adadelta(learning_rate=lr, **kw),
}


def set_seeds(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow and make TF ops deterministic.

    With op determinism a fixed seed gives identical metrics twice on CPU; the price is a few
    percent of speed, worth it for runs that can be compared.
    """
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (Linux flags ``avx512_bf16`` / ``amx_bf16``)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def precision_policy(cfg: TrainConfig, gpus: int, bf16: bool) -> tuple[str, str]:
    """The Keras dtype policy ``cfg`` gets on this machine, and why (for the log).

    float16 on a GPU. On a CPU, bfloat16 only where it measured faster: the from-scratch
    baselines (the Sign MNIST CNN trained 1.3x faster, 928 -> 1,203 images/s) on a CPU with
    native bfloat16; a pretrained MobileNetV2 was slower (401 -> 200 images/s frozen, 100 -> 85
    fine-tuning, docs/training.md), so keras.applications backbones keep float32.
    """
    if not cfg.mixed_precision:
        return "float32", "mixed_precision off"
    if gpus:
        return "mixed_float16", f"mixed float16 on {gpus} GPU(s)"
    if not bf16:
        return "float32", "mixed_precision ignored: no GPU and no native bfloat16 on this CPU"
    if model_mod.get_spec(cfg.backbone).pretrained:
        return "float32", f"mixed_precision ignored: bfloat16 is slower for {cfg.backbone} on CPU"
    return "mixed_bfloat16", "mixed bfloat16 on a CPU with native bfloat16"


def strategy_and_precision(cfg: TrainConfig) -> tf.distribute.Strategy:
    """The distribution strategy of :func:`distribution`; the dtype policy of
    :func:`precision_policy`."""
    gpus = tf.config.list_physical_devices("GPU")
    policy, why = precision_policy(cfg, len(gpus), cpu_has_bf16() if not gpus else False)
    if policy != "float32":
        keras.mixed_precision.set_global_policy(policy)
        log.info("mixed precision: %s", why)
    elif cfg.mixed_precision:
        log.warning("%s", why)
    return distribution(cfg, len(gpus))


def distribution(cfg: TrainConfig, gpus: int) -> tf.distribute.Strategy:
    """Data parallelism over ``cfg.devices`` local devices (``MirroredStrategy``).

    None keeps the behaviour from before the flag: one device, or every GPU when there are
    several. N or ``all``: the first N GPUs (all of them), or, with no GPU, the CPU split into N
    logical devices (``all`` is then the one CPU device). The global batch stays
    ``batch_size``: each of the N replicas computes ``batch_size / N`` examples and their
    gradients are summed, so one step sees the same examples as on one device and the learning
    rate is left as it is. Several nodes are not supported: ``MultiWorkerMirroredStrategy``
    fails inside Keras 3's ``fit`` on TensorFlow (keras-team/keras#20585).

    Raises:
        ConfigError: more devices than this machine has, or a CPU that can no longer be split
            (TensorFlow already ran in this process).
    """
    if cfg.devices is None:
        if gpus > 1:
            log.info("MirroredStrategy over %d GPUs", gpus)
            return tf.distribute.MirroredStrategy()
        return tf.distribute.get_strategy()
    if gpus:
        count = gpus if cfg.devices == "all" else int(cfg.devices)
        if count > gpus:
            raise ConfigError(f"--devices {count}: this machine has {gpus} GPU(s)")
        names = [f"/gpu:{i}" for i in range(count)]
    else:
        count = 1 if cfg.devices == "all" else int(cfg.devices)
        if count > 1:
            split_cpu(count)
        names = [f"/cpu:{i}" for i in range(count)]
    if count == 1:
        return tf.distribute.get_strategy()
    if cfg.batch_size % count:
        log.warning("batch_size %d is not a multiple of %d devices", cfg.batch_size, count)
    log.info(
        "MirroredStrategy over %s: global batch %d, about %d per replica, learning rate as set",
        ", ".join(names),
        cfg.batch_size,
        cfg.batch_size // count,
    )
    return tf.distribute.MirroredStrategy(devices=names)


def split_cpu(count: int) -> None:
    """Make the CPU ``count`` logical devices; possible only before TensorFlow initialises."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == count:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )
    except RuntimeError as exc:
        raise ConfigError(
            f"--devices {count}: TensorFlow already started in this process, so the CPU can no "
            "longer be split into logical devices; run the training in a fresh process"
        ) from exc


def optimizer(cfg: TrainConfig, lr: Any, *, ema: float = 0.0) -> keras.optimizers.Optimizer:
    """The configured optimizer with ``cfg.weight_decay``; ``ema`` > 0 keeps a weight average."""
    if cfg.optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {cfg.optimizer!r} (--optimizer)")
    kwargs: dict[str, Any] = {}
    if cfg.weight_decay > 0:
        kwargs["weight_decay"] = cfg.weight_decay
    if ema > 0:
        kwargs.update(use_ema=True, ema_momentum=ema)
    opt: keras.optimizers.Optimizer = OPTIMIZERS[cfg.optimizer](lr, cfg, **kwargs)
    return opt


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
    """scikit-learn's "balanced" weights, ``n / (k * count_c)``, for the classes present."""
    present = np.flatnonzero(np.bincount(y, minlength=num_classes))
    weights = compute_class_weight("balanced", classes=present, y=y)
    return {int(c): float(w) for c, w in zip(present, weights, strict=True)}


def fine_tune_epochs(cfg: TrainConfig) -> int:
    """Epochs of phase 2: as configured, else a few for a pretrained backbone, none from scratch."""
    if model_mod.is_from_scratch(cfg):
        if cfg.fine_tune_epochs:
            log.info("fine_tune_epochs ignored: %s from scratch trains fully", cfg.backbone)
        return 0
    if cfg.fine_tune_epochs is None:
        return DEFAULT_FINE_TUNE_EPOCHS
    return cfg.fine_tune_epochs


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
        record = {
            "epoch": epoch + 1,
            "phase": self.phase,
            **{k: _num(logs.get(k)) for k in ("loss", "accuracy", "val_loss", "val_accuracy")},
            "learning_rate": self._lr,
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
            self._lr,
            seconds,
            record["images_per_s"] or 0,
        )


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class FitInputs:
    """What every phase of one run shares: the pipelines, the loss, the class weights."""

    train_ds: tf.data.Dataset
    val_ds: tf.data.Dataset
    n_train: int
    steps_per_epoch: int
    loss: keras.losses.Loss
    weights: dict[int, float] | None


@dataclass(frozen=True)
class Phase:
    """One call of ``model.fit``: its number, length and starting learning rate."""

    number: int
    epochs: int
    base_lr: float
    initial_epoch: int = 0


def fit_inputs(cfg: TrainConfig, dataset: Dataset) -> FitInputs:
    """The ``tf.data`` pipelines (augmented training, plain validation), loss and weights."""
    num_classes = dataset.num_classes
    augment = augment_mod.build_augmentation(cfg)
    train_ds = make_pipeline(
        dataset.train, cfg.batch_size, training=True, seed=cfg.seed, augment=augment
    )
    val_ds = make_pipeline(dataset.val, cfg.batch_size, training=False, seed=cfg.seed)
    loss: keras.losses.Loss = keras.losses.SparseCategoricalCrossentropy()
    if cfg.label_smoothing > 0 or (cfg.augment and cfg.mixup > 0):
        # Keras' sparse cross-entropy has no label smoothing, and MixUp blends labels: one-hot.
        def one_hot(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return x, tf.one_hot(tf.cast(y, tf.int32), num_classes)

        train_ds = train_ds.map(one_hot, num_parallel_calls=tf.data.AUTOTUNE)
        val_ds = val_ds.map(one_hot, num_parallel_calls=tf.data.AUTOTUNE)
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
        if cfg.augment and cfg.mixup > 0:
            train_ds = augment_mod.with_mixup(train_ds, cfg.mixup, cfg.seed)
    balanced = cfg.class_weights == "balanced"
    return FitInputs(
        train_ds=train_ds,
        val_ds=val_ds,
        n_train=len(dataset.train),
        steps_per_epoch=math.ceil(len(dataset.train) / cfg.batch_size),
        loss=loss,
        weights=class_weights(dataset.train.y, num_classes) if balanced else None,
    )


def fit_phase(
    model: keras.Model,
    cfg: TrainConfig,
    phase: Phase,
    inputs: FitInputs,
    *,
    records: list[dict[str, Any]],
    checkpoint: Path | None,
    verbose: int,
    best_so_far: float | None = None,
) -> float | None:
    """Compile and fit one phase; returns the best val_loss seen (for the next checkpoint)."""
    schedule = learning_rate_schedule(cfg, phase.base_lr, phase.epochs, inputs.steps_per_epoch)
    # The average starts from phase 1's result; in phase 1 it would start from a random head.
    ema = cfg.ema if phase.number == 2 else 0.0
    model.compile(
        optimizer=optimizer(cfg, schedule, ema=ema), loss=inputs.loss, metrics=["accuracy"]
    )
    callbacks: list[keras.callbacks.Callback] = [EpochLog(phase.number, inputs.n_train, records)]
    if ema > 0:
        # Swapped in for validation and at each epoch's end, before the callbacks below: early
        # stopping and the checkpoint judge and keep the averaged weights, which fit's end
        # leaves in the model.
        callbacks.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
    if cfg.early_stopping > 0:
        # Phase 1 of a fresh network waits a few epochs (its early validation loss is noisy);
        # phase 2 starts from a trained model and does not wait.
        start = cfg.early_stopping_start if phase.number == 1 else 0
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss",
                patience=cfg.early_stopping,
                restore_best_weights=True,
                start_from_epoch=start,
            )
        )
    if checkpoint is not None:
        callbacks.append(
            keras.callbacks.ModelCheckpoint(
                str(checkpoint),
                monitor="val_loss",
                save_best_only=True,
                initial_value_threshold=best_so_far,
                verbose=0,
            )
        )
    log.info(
        "phase %d: %d epochs, %s lr %.2e (%s), %d trainable weights",
        phase.number,
        phase.epochs,
        cfg.optimizer,
        phase.base_lr,
        cfg.schedule,
        len(model.trainable_weights),
    )
    history = model.fit(
        inputs.train_ds,
        validation_data=inputs.val_ds,
        initial_epoch=phase.initial_epoch,
        epochs=phase.initial_epoch + phase.epochs,
        class_weight=inputs.weights,
        callbacks=callbacks,
        shuffle=False,  # the pipeline shuffles (seeded); Keras cannot shuffle a tf.data anyway
        verbose=verbose,
    )
    losses = [v for v in history.history.get("val_loss", []) if v is not None]
    candidates = [v for v in (min(losses) if losses else None, best_so_far) if v is not None]
    return min(candidates) if candidates else None


def fit_phases(
    model: keras.Model,
    cfg: TrainConfig,
    inputs: FitInputs,
    *,
    strategy: tf.distribute.Strategy,
    checkpoint: Path | None,
    verbose: int,
) -> list[dict[str, Any]]:
    """Phase 1, then phase 2 when it applies; returns the per-epoch records of both.

    Early stopping restores the best weights of the phase it watched; when fine-tuning never
    beat phase 1, the checkpoint (the best over both phases) holds the better model and is
    loaded back.
    """
    records: list[dict[str, Any]] = []
    with strategy.scope():
        phase1 = Phase(1, cfg.epochs, cfg.learning_rate)
        best = fit_phase(
            model, cfg, phase1, inputs, records=records, checkpoint=checkpoint, verbose=verbose
        )
    epochs = fine_tune_epochs(cfg)
    if epochs == 0:
        if cfg.ema > 0:
            log.info("ema ignored: it averages phase 2's weights and this run has no phase 2")
        return records
    done = len(records)
    with strategy.scope():
        model_mod.unfreeze(model, cfg.fine_tune_layers)
        phase2 = Phase(2, epochs, cfg.learning_rate * cfg.fine_tune_lr_factor, done)
        fit_phase(
            model,
            cfg,
            phase2,
            inputs,
            records=records,
            checkpoint=checkpoint,
            verbose=verbose,
            best_so_far=best,
        )
    phase2_losses = [r["val_loss"] for r in records[done:] if r["val_loss"] is not None]
    if (
        cfg.early_stopping > 0
        and checkpoint is not None
        and checkpoint.is_file()
        and best is not None
        and phase2_losses
        and min(phase2_losses) > best
    ):
        log.info("fine-tuning did not improve val_loss %.4f: keeping the phase-1 model", best)
        model.load_weights(checkpoint)
    return records
