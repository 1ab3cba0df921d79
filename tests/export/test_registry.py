"""``handserve models`` lists exports without importing TensorFlow."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import handserve_cli as cli
from handserve_cli import models as registry
from tests.conftest import REPO


def _models_with_two_versions(tiny_export: Path, tmp_path: Path) -> Path:
    """A models folder with tiny/1 and tiny/2 (a copy with its manifest renumbered)."""
    models = tmp_path / "models"
    shutil.copytree(tiny_export, models / "tiny" / "1")
    shutil.copytree(tiny_export, models / "tiny" / "2")
    path = models / "tiny" / "2" / "manifest.json"
    data = json.loads(path.read_text())
    data["version"] = 2
    path.write_text(json.dumps(data))
    (models / "tiny" / ".staging-abc").mkdir()  # an export in progress is not a version
    return models


def test_listing_marks_latest_and_shows_size_and_accuracy(tiny_export: Path, tmp_path) -> None:
    models = _models_with_two_versions(tiny_export, tmp_path)
    infos = registry.list_versions(models)
    assert [(i.name, i.version, i.latest) for i in infos] == [("tiny", 1, False), ("tiny", 2, True)]
    assert all(i.size > 0 and i.test_accuracy is not None for i in infos)
    assert "tflite_int8" in infos[0].formats


def test_models_command_output(tiny_export: Path, tmp_path, capsys) -> None:
    models = _models_with_two_versions(tiny_export, tmp_path)
    (models / "broken" / "1").mkdir(parents=True)
    (models / "broken" / "1" / "manifest.json").write_text("not json")
    assert cli.main(["models", "--models-dir", str(models)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["NAME", "VERSION"]
    tiny = [line for line in lines if line.startswith("tiny")]
    assert tiny[0].split()[1] == "1" and tiny[1].split()[1:3] == ["2", "*"]
    assert "MB" in tiny[0] and "%" in tiny[0]
    assert any(line.startswith("broken") and "invalid" in line for line in lines)

    assert cli.main(["models", "--models-dir", str(models), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {(d["name"], d["version"]) for d in data} == {("tiny", 1), ("tiny", 2), ("broken", 1)}


def test_empty_models_folder(tmp_path, capsys) -> None:
    assert cli.main(["models", "--models-dir", str(tmp_path / "none")]) == 0
    assert "no models" in capsys.readouterr().out


def test_registry_and_artifacts_import_no_tensorflow(tiny_export: Path) -> None:
    code = (
        "import sys\n"
        "import handserve.artifacts\n"
        "import handserve_cli as cli\n"
        f"assert cli.main(['models', '--models-dir', {str(tiny_export.parents[1])!r}]) == 0\n"
        f"handserve.artifacts.load_verified(__import__('pathlib').Path({str(tiny_export)!r}))\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "tiny" in proc.stdout
