"""Metrics, confusion matrix and learning curves; ``handserve evaluate``.

``handserve evaluate runs/NAME --dataset sign_mnist --data-dir ../shared/data/sign_mnist``
scores a trained model (a run folder, a ``model.keras`` or a ``models/NAME/VERSION`` folder) on
a dataset's test split (val when there is none). The same functions write ``metrics.json`` and
the PNGs of a run's report, so a run and a later evaluation compute the numbers the same way.
Loss and accuracy are computed with NumPy from the predicted probabilities (as Keras does);
the per-class figures and the confusion matrix by scikit-learn. ``handserve evaluate``'s flags
are in :mod:`training.cli`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from sklearn import metrics as skm

from handserve import artifacts
from handserve.configs import ConfigError
from handserve.images import channels_for
from training import run_folder
from training.config import TrainConfig

log = logging.getLogger(__name__)

_EPS = 1e-7  # Keras clips probabilities the same way before taking the log


# --------------------------------------------------------------------------- metrics


def predict_proba(model: Any, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Softmax outputs for uint8 images ``x`` (N, H, W, C), batched to bound memory."""
    out = [
        np.asarray(model.predict_on_batch(x[i : i + batch_size].astype("float32")))
        for i in range(0, len(x), batch_size)
    ]
    if not out:
        return np.zeros((0, int(model.output_shape[-1])), dtype="float32")
    return np.concatenate(out).astype("float64")


def loss_and_accuracy(probs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``probs`` against integer labels ``y``."""
    if len(y) == 0:
        return {"loss": float("nan"), "accuracy": float("nan")}
    p = np.clip(probs[np.arange(len(y)), y], _EPS, 1.0)
    return {
        "loss": float(-np.log(p).mean()),
        "accuracy": float((probs.argmax(axis=1) == y).mean()),
    }


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``cm[i, j]``: images of true class i predicted as j (every class, present or not)."""
    return np.asarray(
        skm.confusion_matrix(y_true, y_pred, labels=np.arange(num_classes)), dtype=np.int64
    )


def per_class(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]
) -> list[dict[str, Any]]:
    """Precision, recall, F1 and support per class (0 where undefined), by scikit-learn."""
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=np.arange(len(class_names)), zero_division=0
    )
    return [
        {
            "label": name,
            "precision": round(float(precision[i]), 6),
            "recall": round(float(recall[i]), 6),
            "f1": round(float(f1[i]), 6),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    ]


def _finite(d: dict[str, float]) -> dict[str, float | None]:
    return {k: (None if not np.isfinite(v) else round(v, 6)) for k, v in d.items()}


def compute_metrics(model: Any, dataset: Any, batch_size: int = 256) -> dict[str, Any]:
    """The ``metrics.json`` content for ``model`` on ``dataset`` (plus ``confusion_matrix``).

    Per-class figures and the confusion matrix use the test split when there is one, else val.
    ``splits`` says which split chose the checkpoint (val: early stopping and the checkpoint
    watch its loss) and which one is held out from both training and that choice (test).
    The caller pops ``confusion_matrix`` (a list of lists) before writing JSON if unwanted.
    """
    val_probs = predict_proba(model, dataset.val.x, batch_size)
    result: dict[str, Any] = {"val": _finite(loss_and_accuracy(val_probs, dataset.val.y))}
    if dataset.test is not None and len(dataset.test.y):
        test_probs = predict_proba(model, dataset.test.x, batch_size)
        result["test"] = _finite(loss_and_accuracy(test_probs, dataset.test.y))
        result.update(class_report(dataset.test.y, test_probs, dataset.class_names, "test"))
    else:
        result["test"] = None
        result.update(class_report(dataset.val.y, val_probs, dataset.class_names, "val"))
    held_out = dataset.test is not None and len(dataset.test.y) > 0
    result["splits"] = {
        "checkpoint_chosen_on": "val",
        "held_out": "test" if held_out else None,
        "test_origin": dataset.test_origin if held_out else "none: the val figures chose the model",
    }
    return result


def class_report(
    y: np.ndarray, probs: np.ndarray, class_names: list[str], split: str
) -> dict[str, Any]:
    """``per_class`` (named ``split``), ``macro_f1`` and ``confusion_matrix`` of ``probs``.

    The macro F1 averages the classes the images hold, so a test set with only some of the
    model's classes is not scored down for the ones it lacks.
    """
    predicted = probs.argmax(axis=1)
    classes = per_class(y, predicted, list(class_names))
    present = [c["f1"] for c in classes if c["support"] > 0]
    return {
        "per_class": {"split": split, "classes": classes},
        "macro_f1": round(float(np.mean(present)), 6) if present else None,
        "confusion_matrix": confusion_matrix(y, predicted, len(class_names)).tolist(),
    }


# --------------------------------------------------------------------------- plots


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrix(
    cm: np.ndarray, class_names: list[str], path: Path, title: str = ""
) -> Path:
    """Row-normalised confusion matrix with counts, class names on both axes."""
    plt = _pyplot()
    k = len(class_names)
    size = max(4.0, min(16.0, 0.45 * k + 2))
    fig, ax = plt.subplots(figsize=(size, size))
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype="float64"), where=rows > 0)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), labels=class_names, rotation=90 if k > 12 else 0)
    ax.set_yticks(range(k), labels=class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix {title}".strip())
    if k <= 30:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    colour = "white" if norm[i, j] > 0.5 else "black"
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7, color=colour)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_learning_curves(records: list[dict[str, Any]], path: Path) -> Path:
    """Train vs val loss and accuracy per epoch, both phases, the phase boundary marked."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [r["epoch"] for r in records]
    for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
        for prefix, style in (("", "o-"), ("val_", "s--")):
            values = [np.nan if r.get(prefix + key) is None else r[prefix + key] for r in records]
            ax.plot(epochs, values, style, label=f"{'val' if prefix else 'train'} {key}")
        boundary = [r["epoch"] for r in records if r["phase"] == 2]
        if boundary:
            ax.axvline(boundary[0] - 0.5, color="grey", linestyle=":", label="fine-tuning starts")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- evaluate


def find_model_file(target: Path) -> Path:
    """A run folder, a ``models/NAME/VERSION`` folder or a ``.keras`` file → the ``.keras`` file."""
    if target.is_file() and target.suffix == ".keras":
        return target
    if target.is_dir() and (target / run_folder.MODEL).is_file():
        return target / run_folder.MODEL
    raise ConfigError(f"{target}: not a model.keras file or a folder holding model.keras")


def evaluate(target: Path, cfg: TrainConfig) -> dict[str, Any]:
    """Score the model at ``target`` on ``cfg``'s dataset; the report as a dict.

    A folder dataset is scored whole: every image of its ``test/`` folder if it has one, else
    of its class folders, which may be any subset of the model's classes (named as in the
    model's ``labels.txt``). Other datasets are scored on their test split (val if none).

    Raises:
        ConfigError: no model there, or its input shape / class count does not match the data.
        DataError: the data is missing or malformed, or names a class the model lacks.
    """
    import keras

    model_file = find_model_file(target)
    model = keras.saving.load_model(model_file, compile=False)
    want = tuple(int(v) for v in model.input_shape[1:])
    labels_file = model_file.parent / run_folder.LABELS
    labels = artifacts.read_labels(labels_file) if labels_file.is_file() else None
    if cfg.dataset == "folder":
        name, source, metrics = _score_folder(model, model_file, cfg, labels)
    else:
        from training.data import load_dataset

        dataset = load_dataset(cfg)
        name, source, have = dataset.name, str(dataset.source), dataset.input_shape
        n_out = int(model.output_shape[-1])
        if n_out != dataset.num_classes:
            raise ConfigError(
                f"{model_file}: model has {n_out} classes, dataset {dataset.name} has "
                f"{dataset.num_classes}"
            )
        if labels is not None and labels != dataset.class_names:
            log.warning("%s: class names differ from dataset %s", labels_file, dataset.name)
        _check_shape(model_file, want, have, name)
        metrics = compute_metrics(model, dataset, batch_size=max(cfg.batch_size, 128))
    return {"model": str(model_file), "dataset": name, "source": source, **metrics}


def _check_shape(model_file: Path, want: tuple[int, ...], have: tuple[int, ...], name: str) -> None:
    if want != tuple(have):
        raise ConfigError(
            f"{model_file}: model takes images {want}, dataset {name} has {tuple(have)} "
            "(--image-size / --color-mode for folders)"
        )


def _score_folder(
    model: Any, model_file: Path, cfg: TrainConfig, labels: list[str] | None
) -> tuple[str, str, dict[str, Any]]:
    """Metrics on every image of a folder (or its ``test/``), named by the model's labels."""
    from training.data.base import DataError
    from training.data.folder import load_scoring_split

    if cfg.data_dir is None:
        raise DataError("the folder dataset needs --data-dir ROOT with one folder per class")
    name = Path(cfg.data_dir).resolve().name
    shape = (cfg.image_size, cfg.image_size, channels_for(cfg.color_mode))
    _check_shape(model_file, tuple(int(v) for v in model.input_shape[1:]), shape, name)
    split, where, found = load_scoring_split(
        cfg.data_dir, cfg.image_size, cfg.color_mode, labels, cfg.hand_crop
    )
    class_names = labels if labels is not None else found
    n_out = int(model.output_shape[-1])
    if len(class_names) != n_out:
        raise ConfigError(
            f"{model_file}: model has {n_out} classes, {where} has {len(found)} and there is "
            "no labels.txt beside the model to match them by name"
        )
    probs = predict_proba(model, split.x, max(cfg.batch_size, 128))
    metrics: dict[str, Any] = {"val": None, "test": _finite(loss_and_accuracy(probs, split.y))}
    metrics.update(class_report(split.y, probs, class_names, where))
    return name, where, metrics


def format_table(report: dict[str, Any]) -> str:
    """A plain-text table of the per-class metrics and the split totals."""
    split = report["per_class"]["split"]
    lines = [f"model {report['model']} on {report['dataset']} ({split} split)"]
    lines.append(f"{'class':<12} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}")
    for c in report["per_class"]["classes"]:
        lines.append(
            f"{c['label']:<12} {c['precision']:>9.4f} {c['recall']:>7.4f} {c['f1']:>7.4f} "
            f"{c['support']:>8d}"
        )
    for name in ("val", "test"):
        if report.get(name):
            r = report[name]
            lines.append(f"{name}: loss {r['loss']:.4f} accuracy {r['accuracy']:.4f}")
    lines.append(f"macro F1 {report['macro_f1']:.4f}")
    return "\n".join(lines)
