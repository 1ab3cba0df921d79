"""``examples/litert_predict.py`` runs on a real export with only the ``.tflite`` file."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

IMAGES = [
    REPO / "examples" / "images" / "digit_7.png",
    REPO / "examples" / "images" / "digit_3.jpg",
]


@pytest.mark.parametrize("filename", ["model.tflite", "model_int8.tflite"])
def test_example_predicts_from_the_tflite_file_alone(
    tiny_export: Path, tmp_path: Path, filename: str
) -> None:
    lone = tmp_path / filename  # nothing beside it: labels and contract come from inside
    shutil.copy(tiny_export / filename, lone)
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['litert_predict.py', {str(lone)!r}, *{[str(p) for p in IMAGES]!r}]\n"
        "try:\n"
        "    runpy.run_path('examples/litert_predict.py', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "assert 'tensorflow' not in sys.modules\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("tiny v1")
    assert [line.split(":")[0] for line in lines[1:]] == [str(p) for p in IMAGES]
