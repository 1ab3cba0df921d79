"""Metrics, confusion matrix and learning curves; ``handserve evaluate``.

``handserve evaluate runs/NAME --dataset sign_mnist --data-dir ../shared/data/sign_mnist``
scores a trained model (a run folder, a ``model.keras`` or a ``models/NAME/VERSION`` folder) on
a dataset's test split (val when there is none). The same functions write ``metrics.json`` and
the PNGs of a run's report, so a run and a later evaluation compute the numbers the same way.
Metrics are computed with NumPy from the predicted probabilities: no second framework to agree
with.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from handserve import configs
from handserve.configs import ConfigError
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
    """``cm[i, j]``: images of true class i predicted as j."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true.astype(np.int64), y_pred.astype(np.int64)), 1)
    return cm


def per_class(cm: np.ndarray, class_names: list[str]) -> list[dict[str, Any]]:
    """Precision, recall, F1 and support per class from a confusion matrix (0 where undefined)."""
    tp = np.diag(cm).astype("float64")
    predicted = cm.sum(axis=0).astype("float64")
    support = cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
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
    The caller pops ``confusion_matrix`` (a list of lists) before writing JSON if unwanted.
    """
    val_probs = predict_proba(model, dataset.val.x, batch_size)
    result: dict[str, Any] = {"val": _finite(loss_and_accuracy(val_probs, dataset.val.y))}
    if dataset.test is not None and len(dataset.test.y):
        test_probs = predict_proba(model, dataset.test.x, batch_size)
        result["test"] = _finite(loss_and_accuracy(test_probs, dataset.test.y))
        split, y, probs = "test", dataset.test.y, test_probs
    else:
        result["test"] = None
        split, y, probs = "val", dataset.val.y, val_probs
    cm = confusion_matrix(y, probs.argmax(axis=1), len(dataset.class_names))
    classes = per_class(cm, list(dataset.class_names))
    result["per_class"] = {"split": split, "classes": classes}
    result["macro_f1"] = round(float(np.mean([c["f1"] for c in classes])), 6)
    result["confusion_matrix"] = cm.tolist()
    return result


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


# --------------------------------------------------------------------------- CLI

#: TrainConfig fields that describe the data, offered as ``handserve evaluate`` flags.
DATA_FIELDS = (
    "data_dir",
    "image_size",
    "color_mode",
    "val_fraction",
    "test_fraction",
    "limit",
    "seed",
    "batch_size",
)


def find_model_file(target: Path) -> Path:
    """A run folder, a ``models/NAME/VERSION`` folder or a ``.keras`` file → the ``.keras`` file."""
    if target.is_file() and target.suffix == ".keras":
        return target
    if target.is_dir() and (target / "model.keras").is_file():
        return target / "model.keras"
    raise ConfigError(f"{target}: not a model.keras file or a folder holding model.keras")


def configure(parser: argparse.ArgumentParser) -> None:
    """``handserve evaluate MODEL_OR_RUN --dataset X [data flags] [--output FILE]``."""
    parser.add_argument("model", type=Path, metavar="MODEL_OR_RUN")
    parser.add_argument("--output", type=Path, default=None, help="write the report as JSON here")
    configs.add_arguments(
        parser,
        TrainConfig,
        skip=tuple(
            f for f in TrainConfig.__dataclass_fields__ if f not in ("dataset", *DATA_FIELDS)
        ),
    )


def evaluate(target: Path, cfg: TrainConfig) -> dict[str, Any]:
    """Score the model at ``target`` on ``cfg``'s dataset; the report as a dict.

    Raises:
        ConfigError: no model there, or its input shape / class count does not match the data.
    """
    import keras

    from training import data

    model_file = find_model_file(target)
    model = keras.saving.load_model(model_file, compile=False)
    dataset = data.load_dataset(cfg)
    want = tuple(int(v) for v in model.input_shape[1:])
    have = tuple(int(v) for v in dataset.input_shape)
    if want != have:
        raise ConfigError(
            f"{model_file}: model takes images {want}, dataset {dataset.name} has {have} "
            "(--image-size / --color-mode for folders)"
        )
    n_out = int(model.output_shape[-1])
    if n_out != dataset.num_classes:
        raise ConfigError(
            f"{model_file}: model has {n_out} classes, dataset {dataset.name} has "
            f"{dataset.num_classes}"
        )
    labels_file = model_file.parent / "labels.txt"
    if labels_file.is_file():
        labels = labels_file.read_text().splitlines()
        if labels != list(dataset.class_names):
            log.warning("%s: class names differ from dataset %s", labels_file, dataset.name)
    metrics = compute_metrics(model, dataset, batch_size=max(cfg.batch_size, 128))
    return {
        "model": str(model_file),
        "dataset": dataset.name,
        "source": str(dataset.source),
        **metrics,
    }


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


def run(args: argparse.Namespace) -> int:
    """Entry point of ``handserve evaluate``."""
    from training.data import DataError

    try:
        target = args.model
        overrides = configs.overrides_from_args(args, TrainConfig)
        model_file = find_model_file(target)
        # Folder datasets have no native size: default to the one the model was trained on.
        _defaults_from_model(model_file, overrides)
        cfg = configs.load(TrainConfig, None, overrides)
        report = evaluate(model_file, cfg)
    except (DataError, ConfigError) as exc:
        _say(f"error: {exc}", err=True)
        return 2
    report.pop("confusion_matrix", None)
    _say(format_table(report))
    if args.output:
        args.output.write_text(json.dumps(report, indent=2) + "\n")
        _say(f"report: {args.output}")
    return 0


def _defaults_from_model(model_file: Path, overrides: dict[str, Any]) -> None:
    """Fill image_size/color_mode from the run's saved dataset.json when flags did not."""
    for info in (model_file.parent / "dataset.json", model_file.parent / "report" / "dataset.json"):
        if info.is_file():
            shape = json.loads(info.read_text()).get("input_shape")
            if shape:
                overrides.setdefault("image_size", int(shape[0]))
                overrides.setdefault("color_mode", "grayscale" if shape[-1] == 1 else "rgb")
            return


def _say(text: str, *, err: bool = False) -> None:
    """CLI output: results on stdout (scripts read them), errors on stderr."""
    print(text, file=sys.stderr if err else sys.stdout)
