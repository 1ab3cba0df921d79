"""Training into a run folder: load the data, build the model, fit the phases, write the run.

``handserve train --config configs/sign_mnist.yaml --epochs 12`` (see :mod:`training.cli`)
calls :func:`train`, which writes ``runs/NAME/`` (layout in :mod:`training.run_folder` and
docs/architecture.md). The run is written into ``runs/.NAME.partial`` and renamed only when
complete, so a folder without ``.partial`` is always finished; on any failure the partial folder
is removed. Phases and their callbacks are in :mod:`training.fitting`; the numbers of the report
in :mod:`training.evaluate`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from handserve import artifacts, hand_features
from handserve.configs import ConfigError
from training import augment as augment_mod
from training import evaluate as evaluate_mod
from training import fitting, run_folder
from training import model as model_mod
from training.config import TrainConfig
from training.data import Dataset, load_dataset
from training.run_folder import CHECKPOINT, RUN_FILES, BackboneInfo, DatasetInfo, RunFolder

log = logging.getLogger(__name__)

__all__ = ["CHECKPOINT", "RUN_FILES", "TrainResult", "train"]

N_SAMPLES = 512
N_CALIBRATION = 256


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced, and the name ``--export`` publishes it under."""

    run_dir: Path
    metrics: dict[str, Any]
    export_name: str


def train(cfg: TrainConfig, *, verbose: int = 0) -> TrainResult:
    """Train ``cfg``, evaluate, and write the run folder.

    Args:
        cfg: the resolved configuration.
        verbose: Keras' own fit output (0: none; one line per epoch is logged either way).

    Raises:
        DataError, ConfigError, ModelError: bad data, config, backbone or weights; no finished
            run folder is left behind.
    """
    runs_dir = Path(cfg.runs_dir)
    name = _run_name(cfg, runs_dir)
    fitting.set_seeds(cfg.seed)
    spec = model_mod.get_spec(cfg.backbone)  # fail on a bad name before loading data
    if cfg.backbone in model_mod.HAND_FEATURES:
        return _train_hands(cfg, runs_dir, name, verbose)
    dataset = load_dataset(cfg)
    if len(dataset.val.y) == 0:
        raise ConfigError("validation split is empty; raise --val-fraction or --limit")
    # The export name is checked (in config) or derived now, so --export cannot fail on it late.
    export_name = cfg.export_name or artifacts.slugify(dataset.name)
    policy = keras.mixed_precision.global_policy().name
    try:
        with partial_run_dir(runs_dir, name) as run_dir:
            metrics = _train_into(cfg, dataset, spec, RunFolder(run_dir), verbose)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    final = runs_dir / name
    held_out = metrics["splits"]["test_origin"]
    log.info(
        "run %s: val accuracy %.4f (val chose the model), test accuracy %s (%s), %.0f images/s",
        final,
        metrics["val"]["accuracy"],
        "n/a" if metrics["test"] is None else f"{metrics['test']['accuracy']:.4f}",
        held_out,
        metrics["train_images_per_s"],
    )
    return TrainResult(final, metrics, export_name)


def _train_into(
    cfg: TrainConfig,
    dataset: Dataset,
    spec: model_mod.BackboneSpec,
    run: RunFolder,
    verbose: int,
) -> dict[str, Any]:
    """Build, fit the phases, score, and write everything into the partial run folder."""
    strategy = fitting.strategy_and_precision(cfg)
    inputs = fitting.fit_inputs(cfg, dataset)
    with strategy.scope():
        model = model_mod.build_model(cfg, dataset.input_shape, dataset.num_classes)
    checkpoint = run / CHECKPOINT if cfg.checkpoint else None
    records = fitting.fit_phases(
        model, cfg, inputs, strategy=strategy, checkpoint=checkpoint, verbose=verbose
    )
    if keras.mixed_precision.global_policy().name != "float32" or strategy.num_replicas_in_sync > 1:
        model = _plain_float32_copy(model, cfg, dataset)
    metrics = evaluate_mod.compute_metrics(model, dataset, batch_size=max(cfg.batch_size, 128))
    confusion = metrics.pop("confusion_matrix")
    metrics.update(training_summary(records, len(dataset.train), cfg))
    metrics["replicas"] = int(strategy.num_replicas_in_sync)  # devices the fit ran on
    _write_run(run, cfg, dataset, spec, model, metrics, records, np.asarray(confusion))
    return metrics


def _train_hands(cfg: TrainConfig, runs_dir: Path, name: str, verbose: int) -> TrainResult:
    """A hand-feature run (training.hand_head): the same run folder, report and metrics."""
    from training import hand_head
    from training.data import hands as hand_data

    if cfg.dataset != "folder":
        raise ConfigError(f"--backbone {cfg.backbone} reads photos: use --dataset folder")
    embedder = hand_head.embedder_bytes(cfg)  # fail on a missing embedder before any detection
    roots = [d for d in [cfg.data_dir, *(cfg.extra_data_dirs or [])] if d]
    dataset = hand_data.load_hand_dataset(
        roots,
        val_fraction=cfg.val_fraction,
        test_fraction=cfg.folder_test_fraction,
        seed=cfg.seed,
        limit=cfg.limit,
    )
    if len(dataset.val.y) == 0:
        raise ConfigError("validation split is empty; raise --val-fraction or --limit")
    export_name = cfg.export_name or artifacts.slugify(dataset.name)
    with partial_run_dir(runs_dir, name) as run_dir:
        run = RunFolder(run_dir)
        checkpoint = run / CHECKPOINT if cfg.checkpoint else None
        model, records = hand_head.fit_head(
            cfg, dataset, embedder=embedder, checkpoint=checkpoint, verbose=verbose
        )
        metrics = evaluate_mod.compute_metrics(model, dataset, batch_size=512)
        confusion = np.asarray(metrics.pop("confusion_matrix"))
        metrics.update(training_summary(records, len(dataset.train), cfg))
        metrics["replicas"] = 1
        metrics["no_hand"] = len(dataset.no_hand)
        model.head.save(run / run_folder.MODEL)
        run.write_config(cfg.to_dict())
        run.write_json(
            run_folder.DATASET,
            {
                "name": dataset.name,
                "source": dataset.source,
                "class_names": dataset.class_names,
                "features": model.kind,
                "input_shape": [int(model.head.input_shape[-1])],
                "sizes": {
                    "train": len(dataset.train),
                    "val": len(dataset.val),
                    "test": 0 if dataset.test is None else len(dataset.test),
                },
                "groups": list(dataset.groups),
                "skipped": len(dataset.no_hand),
                "no_hand": list(dataset.no_hand),
                "embedder_sha256": None if embedder is None else hand_features.sha256(embedder),
            },
        )
        run.write_environment()
        run.write_history(records)
        run.write_metrics(metrics)
        run.write_backbone(
            BackboneInfo(
                name=cfg.backbone,
                weights="none" if embedder is None else f"file:{Path(cfg.weights).resolve()}",
                backbone_size=None,
                augmentation={"hand_copies": cfg.hand_copies if cfg.augment else 0},
            )
        )
        run.write_labels(dataset.class_names)
        if embedder is not None:  # the copy the export puts in the version folder
            (run / hand_features.EMBEDDER_FILE).write_bytes(embedder)
        _write_report_and_samples(run, cfg, dataset, metrics, records, confusion)
    final = runs_dir / name
    log.info(
        "run %s: val accuracy %.4f, test accuracy %s (%s)",
        final,
        metrics["val"]["accuracy"],
        "n/a" if metrics["test"] is None else f"{metrics['test']['accuracy']:.4f}",
        metrics["splits"]["test_origin"],
    )
    return TrainResult(final, metrics, export_name)


def _plain_float32_copy(model: keras.Model, cfg: TrainConfig, dataset: Dataset) -> keras.Model:
    """The same weights in a float32, single-device model: what is saved, scored and exported.

    Mixed precision keeps float32 variables and only computes in float16/bfloat16, so the
    weights carry over unchanged; a saved mixed-precision model would put bfloat16 casts into
    the SavedModel and the LiteRT files. A model built under ``MirroredStrategy`` keeps its
    mirrored variables, and Keras 3's ``predict_on_batch`` on it returned every row once per
    replica (60 answers for 30 images on 2 devices), so scoring and export use a plain copy.
    """
    keras.mixed_precision.set_global_policy("float32")
    plain = model_mod.build_model(cfg, dataset.input_shape, dataset.num_classes)
    plain.set_weights(model.get_weights())
    return plain


def training_summary(
    records: list[dict[str, Any]], n_train: int, cfg: TrainConfig
) -> dict[str, Any]:
    """Speed and length of the fit, for ``metrics.json``."""
    seconds = sum(r["seconds"] for r in records)
    # Epoch 1 includes graph tracing; the median of later epochs is the steady-state speed.
    later = [r["images_per_s"] for r in records[1:] if r["images_per_s"]] or [
        r["images_per_s"] for r in records if r["images_per_s"]
    ]
    summary: dict[str, Any] = {
        "train_images_per_s": round(n_train * len(records) / seconds, 1) if seconds else 0.0,
        "train_images_per_s_steady": round(float(np.median(later)), 1) if later else 0.0,
        "train_seconds": round(seconds, 2),
        "epochs_run": len(records),
        "seconds_per_epoch": round(seconds / len(records), 2) if records else 0.0,
    }
    finite = [r for r in records if r["val_loss"] is not None]
    if finite:
        summary["best_epoch"] = min(finite, key=lambda r: r["val_loss"])["epoch"]
    # Early stopping restores the best weights; without it the model is the last epoch's.
    summary["weights_from"] = "best epoch" if cfg.early_stopping > 0 else "last epoch"
    return summary


def _write_run(
    run: RunFolder,
    cfg: TrainConfig,
    dataset: Dataset,
    spec: model_mod.BackboneSpec,
    model: keras.Model,
    metrics: dict[str, Any],
    records: list[dict[str, Any]],
    confusion: np.ndarray,
) -> None:
    """Every file of :data:`training.run_folder.RUN_FILES`; fails if one is missing after."""
    model.save(run / run_folder.MODEL)
    run.write_config(cfg.to_dict())
    run.write_dataset(DatasetInfo.of(dataset))
    run.write_environment()
    run.write_history(records)
    run.write_metrics(metrics)
    run.write_backbone(
        BackboneInfo(
            name=spec.name,
            weights=model_mod.weights_label(cfg),
            backbone_size=model_mod.resolve_backbone_size(cfg, spec),
            augmentation=augment_mod.describe(cfg),
        )
    )
    run.write_labels(dataset.class_names)
    _write_report_and_samples(run, cfg, dataset, metrics, records, confusion)


def _write_report_and_samples(
    run: RunFolder,
    cfg: TrainConfig,
    dataset: Any,
    metrics: dict[str, Any],
    records: list[dict[str, Any]],
    confusion: np.ndarray,
) -> None:
    """What every run writes last, image or hand features alike: the confusion matrix and
    learning curves, the samples (parity data) and calibration set of the export, then the
    check that no file of :data:`training.run_folder.RUN_FILES` is missing."""
    evaluate_mod.plot_confusion_matrix(
        confusion,
        dataset.class_names,
        run / "confusion_matrix.png",
        title=f"{dataset.name} {metrics['per_class']['split']} split",
    )
    evaluate_mod.plot_learning_curves(records, run / "learning_curves.png")
    sample_split = dataset.test if dataset.test is not None else dataset.val
    sx, sy = _subsample(sample_split.x, sample_split.y, N_SAMPLES, cfg.seed)
    run.write_samples(sx, sy)
    cx, _ = _subsample(dataset.train.x, dataset.train.y, N_CALIBRATION, cfg.seed + 1)
    run.write_calibration(cx)
    missing = run.missing(RUN_FILES)
    if missing:  # a bug, not a user error: never publish an incomplete run
        raise RuntimeError(f"run folder incomplete, missing {missing}")


def _subsample(x: np.ndarray, y: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.sort(np.random.default_rng(seed).permutation(len(x))[:n])
    return x[idx], y[idx]


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
    """Yield ``runs/.NAME.partial``; rename to ``runs/NAME`` on success, delete on any failure
    (with ``runs/`` itself when it was made here and is empty: nothing is left behind)."""
    made_runs_dir = not runs_dir.exists()
    runs_dir.mkdir(parents=True, exist_ok=True)
    partial = runs_dir / f".{name}.partial"
    try:
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir()
        yield partial
    except BaseException as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if made_runs_dir:
            with contextlib.suppress(OSError):  # not empty: another run is being written
                runs_dir.rmdir()
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(partial)  # a full disk mid-write: say which folder (see the CLI)
        raise
    partial.rename(runs_dir / name)
