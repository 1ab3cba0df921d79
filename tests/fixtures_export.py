"""Session fixture: one tiny export of the tiny run (owned by export).

``tiny_export`` is the path of ``models/tiny/1`` exported from ``tiny_run`` into a session
temporary models folder, with the parity check on. Tests must not modify it: copy it first
(``shutil.copytree``) to corrupt or extend it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_EXPORT_NAME = "tiny"


@pytest.fixture(scope="session")
def tiny_export(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``models/tiny/1`` exported from ``tiny_run`` (SavedModel, three .tflite, manifest)."""
    from training.export import export_run

    models_dir = tmp_path_factory.mktemp("export") / "models"
    return export_run(Path(tiny_run), models_dir, TINY_EXPORT_NAME, verify=True)
