"""``handserve verify``: a changed, missing or unreadable file is caught and named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import handserve_cli as cli
from handserve import artifacts
from training import verify

pytestmark = pytest.mark.slow


@pytest.fixture
def export_copy(tiny_export: Path, tmp_path: Path) -> Path:
    """A private copy of the session export (same NAME/VERSION folder names) to damage."""
    dest = tmp_path / "models" / tiny_export.parent.name / tiny_export.name
    shutil.copytree(tiny_export, dest)
    return dest


def _verify(path: Path, *extra: str) -> int:
    return cli.main(["verify", str(path), "--speed-seconds", "0", "--num-threads", "1", *extra])


def test_verify_passes_and_prints_the_table(tiny_export: Path, capsys) -> None:
    assert _verify(tiny_export) == 0
    out = capsys.readouterr().out
    for name in ("keras", "saved_model", "tflite_fp32", "tflite_fp16", "tflite_int8"):
        assert name in out
    assert "FAIL" not in out and "parity ok" in out
    for file in ("model.tflite", "model_fp16.tflite", "model_int8.tflite"):
        assert f"  {file}: ok" in out  # each carries TFLite Metadata a task library accepts


def test_verify_reports_a_file_without_valid_metadata(export_copy: Path, capsys) -> None:
    """A version exported before TFLite Metadata: verify says which file and why."""
    from training import tflite_metadata

    path = export_copy / "model_fp16.tflite"
    data = path.read_bytes()
    # rename the metadata entry: the file still runs, but no library finds its metadata
    path.write_bytes(data.replace(b"TFLITE_METADATA", b"TFLITE_METADATX", 1))
    manifest = json.loads((export_copy / "manifest.json").read_text())
    for entry in manifest["files"]:
        if entry["path"] == "model_fp16.tflite":
            entry["sha256"] = artifacts.sha256_file(path)
    (export_copy / "manifest.json").write_text(json.dumps(manifest))
    assert tflite_metadata.read_metadata(path) is None
    _verify(export_copy)
    out = capsys.readouterr().out
    assert "model_fp16.tflite: no TFLITE_METADATA" in out
    assert "  model.tflite: ok" in out


def test_speed_columns_are_measured(tiny_export: Path) -> None:
    report = verify.verify_version(tiny_export, speed_seconds=0.05, limit=40)
    for row in report.results:
        assert row.images_per_s_1 and row.images_per_s_1 > 0
        assert row.images_per_s_32 and row.images_per_s_32 > 0
    assert "img/s@32" in verify.format_table(report)


def test_flipped_byte_is_caught_naming_the_file(export_copy: Path, capsys) -> None:
    target = export_copy / "model_int8.tflite"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    assert _verify(export_copy) == 1
    err = capsys.readouterr().err
    assert "model_int8.tflite" in err and "sha256" in err


def test_missing_file_is_caught_naming_the_file(export_copy: Path, capsys) -> None:
    (export_copy / "model_fp16.tflite").unlink()
    assert _verify(export_copy) == 1
    err = capsys.readouterr().err
    assert "model_fp16.tflite" in err and "missing" in err


def test_broken_manifest_is_caught(export_copy: Path, capsys) -> None:
    (export_copy / "manifest.json").write_text('{"schema_version": 1, "name": ')
    assert _verify(export_copy) == 1
    err = capsys.readouterr().err
    assert "manifest.json" in err and "does not parse" in err


def test_input_shape_differing_from_contract_is_caught(export_copy: Path, capsys) -> None:
    path = export_copy / "manifest.json"
    data = json.loads(path.read_text())
    data["input"]["height"] += 4
    path.write_text(json.dumps(data))
    assert _verify(export_copy) == 1
    err = capsys.readouterr().err
    assert "model.keras" in err and "input contract" in err


def test_parity_failure_exits_non_zero(tiny_export: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(verify.PARITY_BOUNDS, "float32", verify.Bound(max_abs_diff=-1.0))
    assert _verify(tiny_export, "--limit", "32") == 1
    captured = capsys.readouterr()
    assert "FAIL" in captured.out
    assert "tflite_fp32" in captured.err and "max |prob diff|" in captured.err


def test_bounds_table_matches_the_issue() -> None:
    bounds = verify.PARITY_BOUNDS
    assert bounds["float32"] == verify.Bound(min_agreement=0.999, max_abs_diff=1e-4)
    assert bounds["float16"].min_agreement == 0.99
    assert bounds["float16"].max_accuracy_drop == 0.005
    assert bounds["int8"].max_accuracy_drop == 0.01
    assert artifacts.SCHEMA_VERSION == 1
