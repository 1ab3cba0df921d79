"""Metric arithmetic on hand-made numbers (no model needed)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from training import evaluate


def test_confusion_and_per_class() -> None:
    y_true = np.array([0, 0, 1, 1, 2])
    y_pred = np.array([0, 1, 1, 1, 0])
    cm = evaluate.confusion_matrix(y_true, y_pred, 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    rows = evaluate.per_class(y_true, y_pred, ["a", "b", "c"])
    assert rows[0] == {"label": "a", "precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert rows[1]["precision"] == pytest.approx(2 / 3) and rows[1]["recall"] == 1.0
    assert rows[2] == {"label": "c", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_loss_and_accuracy() -> None:
    probs = np.array([[0.5, 0.5], [0.1, 0.9]])
    result = evaluate.loss_and_accuracy(probs, np.array([0, 1]))
    assert result["loss"] == pytest.approx(-(math.log(0.5) + math.log(0.9)) / 2)
    assert result["accuracy"] == 1.0  # argmax of a tie is the first class: right
    assert evaluate.loss_and_accuracy(probs, np.array([1, 1]))["accuracy"] == 0.5


def test_plots_write_pngs(tmp_path) -> None:
    cm = np.array([[3, 1], [0, 4]])
    evaluate.plot_confusion_matrix(cm, ["x", "y"], tmp_path / "cm.png")
    records: list[dict[str, Any]] = [
        {
            "epoch": 1,
            "phase": 1,
            "loss": 1.0,
            "accuracy": 0.5,
            "val_loss": 1.1,
            "val_accuracy": 0.4,
        },
        {
            "epoch": 2,
            "phase": 2,
            "loss": 0.5,
            "accuracy": 0.8,
            "val_loss": None,
            "val_accuracy": None,
        },
    ]
    evaluate.plot_learning_curves(records, tmp_path / "lc.png")
    for name in ("cm.png", "lc.png"):
        assert (tmp_path / name).stat().st_size > 1000
