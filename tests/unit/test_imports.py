"""What importing a module loads: the parts that need no TensorFlow start without it.

Each check runs in a fresh interpreter, so ``sys.modules`` shows what the import itself pulled in
(this test session has TensorFlow loaded already).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.parametrize("module", ["training.data", "training.config", "training.run_folder"])
def test_module_imports_without_tensorflow(module: str) -> None:
    """``training.data`` pulled TensorFlow in (10-20 s, and 28-60 s of test collection, issue
    35): the loaders are NumPy and scikit-learn; only ``make_pipeline`` needs TensorFlow."""
    code = (
        f"import sys, {module}\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))\n"
        "assert not heavy, heavy[:5]\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_make_pipeline_is_still_importable_from_training_data() -> None:
    """The lazy name resolves to the pipeline module's function; a wrong name still fails."""
    import training.data
    from training.data import pipeline

    assert training.data.make_pipeline is pipeline.make_pipeline
    with pytest.raises(AttributeError, match="no_such_name"):
        training.data.no_such_name  # noqa: B018
