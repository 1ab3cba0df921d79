"""The run folder's reader: what an export takes from a finished run (no model is loaded)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from training import run_folder


def _finished_run(path: Path) -> Path:
    """The files :func:`run_folder.read_finished` reads, with a placeholder model file."""
    path.mkdir()
    (path / run_folder.MODEL).write_bytes(b"not read here")
    (path / run_folder.LABELS).write_text("a\nb\n")
    files = {
        run_folder.CONFIG: {"dataset": "digits"},
        run_folder.DATASET: {"name": "d", "class_names": ["a", "b"], "input_shape": [8, 8, 1]},
        run_folder.BACKBONE: {"name": "cnn"},
        run_folder.METRICS: {"test": {"accuracy": 0.5}},
    }
    for name, data in files.items():
        (path / name).write_text(json.dumps(data))
    for name in (run_folder.SAMPLES, run_folder.CALIBRATION):
        np.savez_compressed(path / name, x=np.zeros((1, 8, 8, 1), np.uint8))
    return path


def test_the_environment_is_the_runs_record(tmp_path: Path) -> None:
    """An export's ``library_versions`` come from here: the training machine's versions as the
    run saved them, never the reading process's (issue 35)."""
    run = _finished_run(tmp_path / "run")
    saved = {"tensorflow": "2.20.0", "keras": "3.14.0", "python": "3.12.8"}
    (run / run_folder.ENVIRONMENT).write_text(json.dumps(saved))
    assert run_folder.read_finished(run).environment == saved


def test_a_run_without_an_environment_record_claims_none(tmp_path: Path) -> None:
    run = _finished_run(tmp_path / "run")
    assert run_folder.read_finished(run).environment == {}
