"""What ``handserve export`` writes, and that a failed or interrupted export publishes nothing."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

import handserve_cli as cli
from handserve import artifacts
from handserve.runtimes import LiteRTRuntime, SavedModelRuntime
from tests.export.handmade import make_run
from training import export, verify
from training.evaluate import predict_proba

pytestmark = pytest.mark.slow

EXPECTED_FILES = {
    "manifest.json",
    "model.keras",
    "labels.txt",
    "samples.npz",
    "model.tflite",
    "model_fp16.tflite",
    "model_int8.tflite",
    "saved_model/saved_model.pb",
    "report/config.json",
    "report/dataset.json",
    "report/metrics.json",
}
TFLITE_FILES = ("model.tflite", "model_fp16.tflite", "model_int8.tflite")


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_every_file_is_written_and_checksummed(tiny_export: Path, tiny_run: Path) -> None:
    files = _files(tiny_export)
    assert files >= EXPECTED_FILES
    assert any(f.startswith("saved_model/variables/") for f in files)
    manifest = artifacts.read_manifest(tiny_export)
    assert {f.path for f in manifest.files} == files - {"manifest.json"}
    artifacts.verify_files(tiny_export, manifest)  # raises if any checksum is off
    for png in Path(tiny_run).glob("*.png"):
        assert f"report/{png.name}" in files


def test_manifest_is_complete_and_round_trips(tiny_export: Path, tiny_run: Path) -> None:
    manifest = artifacts.load_verified(tiny_export)
    again = artifacts.Manifest.from_dict(json.loads(json.dumps(manifest.to_dict())))
    assert again == manifest
    assert (manifest.name, manifest.version) == ("tiny", 1)
    assert manifest.schema_version == artifacts.SCHEMA_VERSION
    assert manifest.created_at.endswith("Z")
    assert manifest.labels == artifacts.read_labels(Path(tiny_run) / "labels.txt")
    dataset = json.loads((Path(tiny_run) / "dataset.json").read_text())
    assert list(manifest.input.shape) == dataset["input_shape"]
    assert manifest.input.value_range == (0.0, 255.0)
    assert manifest.backbone == json.loads((Path(tiny_run) / "backbone.json").read_text())
    assert manifest.training == json.loads((Path(tiny_run) / "config.json").read_text())
    assert set(manifest.formats) == {"saved_model", "tflite_fp32", "tflite_fp16", "tflite_int8"}
    for fmt in manifest.formats.values():
        assert {"accuracy", "agreement_with_keras", "max_abs_diff"} <= set(fmt.metrics)
    evaluation = manifest.metrics["export_evaluation"]
    assert evaluation["images"] > 0 and "samples.npz" in evaluation["data"]
    assert {"tensorflow", "keras", "ai_edge_litert"} <= set(manifest.library_versions)


def test_int8_takes_raw_uint8_pixels(tiny_export: Path) -> None:
    entry = artifacts.read_manifest(tiny_export).formats["tflite_int8"]
    assert (entry.input_dtype, entry.input_scale, entry.input_zero_point) == ("uint8", 1.0, 0)
    assert entry.output_dtype == "float32"
    runner = LiteRTRuntime(tiny_export / entry.path)
    assert runner.input_dtype == np.uint8


def test_no_flex_or_custom_operators(tiny_export: Path) -> None:
    for name in TFLITE_FILES:
        ops = export.operator_names(tiny_export / name)
        assert ops, name
        assert export.non_builtin_operators(ops) == [], (name, ops)
        assert not any("flex" in op.lower() for op in ops)


def test_non_builtin_operators_are_detected() -> None:
    assert export.non_builtin_operators(["CONV_2D", "FlexErfinv", "SOFTMAX"]) == ["FlexErfinv"]


def test_labels_and_contract_travel_inside_each_tflite(tiny_export: Path) -> None:
    manifest = artifacts.read_manifest(tiny_export)
    for key in ("tflite_fp32", "tflite_fp16", "tflite_int8"):
        path = tiny_export / manifest.formats[key].path
        with zipfile.ZipFile(path) as zf:  # a plain zip reader, as an app would use
            assert sorted(zf.namelist()) == ["labels.txt", "metadata.json"]
            assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
            labels = zf.read("labels.txt").decode().splitlines()
            meta = json.loads(zf.read("metadata.json"))
        assert labels == manifest.labels
        inp = meta["input"]
        assert (inp["height"], inp["width"], inp["channels"]) == manifest.input.shape
        assert inp["color_mode"] == manifest.input.color_mode
        assert inp["dtype"] == manifest.formats[key].input_dtype
        assert meta["precision"] == manifest.formats[key].precision
        # The interpreter ignores the appended archive and still runs.
        probs = LiteRTRuntime(path).predict(np.zeros((2, *manifest.input.shape), np.uint8))
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-2)


def test_saved_model_is_deterministic_and_equals_keras(tiny_export: Path) -> None:
    x, _ = verify.load_samples(tiny_export)
    x = x[:64]
    runner = SavedModelRuntime(tiny_export / "saved_model")
    assert runner.input_shape == artifacts.read_manifest(tiny_export).input.shape
    first, second = runner.predict(x), runner.predict(x)
    np.testing.assert_array_equal(first, second)
    expected = predict_proba(verify.load_keras(tiny_export / "model.keras"), x)
    np.testing.assert_allclose(first, expected, atol=1e-5)


def test_parity_within_bounds(tiny_export: Path) -> None:
    report = verify.verify_version(tiny_export, num_threads=1)
    assert report.failures == []
    rows = {r.name: r for r in report.results}
    assert set(rows) == {"keras", "saved_model", "tflite_fp32", "tflite_fp16", "tflite_int8"}
    assert rows["tflite_fp32"].agreement >= 0.999
    assert rows["tflite_fp32"].max_abs_diff <= 1e-4
    assert rows["tflite_fp16"].agreement >= 0.99
    # int8: one point, widened only by the sampling noise of a small sample (see verify.Bound).
    assert rows["keras"].accuracy - rows["tflite_int8"].accuracy <= 0.05


def test_int8_allowance_is_one_point_on_large_samples() -> None:
    bound = verify.PARITY_BOUNDS["int8"]
    assert verify.allowed_accuracy_drop(bound, discordant=30, n=10_000) == 0.01
    assert (verify.allowed_accuracy_drop(bound, discordant=25, n=359) or 0) > 0.02


def test_second_export_is_version_2_and_latest(tiny_export: Path, tiny_run: Path, tmp_path) -> None:
    models = tmp_path / "models"
    shutil.copytree(tiny_export.parent, models / "tiny")
    path = export.export_run(tiny_run, models, "tiny", verify=False)
    assert path == models / "tiny" / "2"
    assert artifacts.latest_version(models, "tiny") == 2
    assert artifacts.load_verified(path).version == 2
    assert artifacts.load_verified(models / "tiny" / "1").version == 1  # untouched


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_interrupted_export_leaves_nothing(
    tiny_run: Path, tmp_path, monkeypatch, exc: type[BaseException]
) -> None:
    real = export.convert_tflite

    def convert(saved_model, precision, calibration=None, **kwargs):
        if precision == "float16":  # after the SavedModel and model.tflite were written
            raise exc("stopped mid-export")
        return real(saved_model, precision, calibration, **kwargs)

    monkeypatch.setattr(export, "convert_tflite", convert)
    models = tmp_path / "models"
    with pytest.raises(exc):
        export.export_run(tiny_run, models, "tiny")
    assert artifacts.list_versions(models, "tiny") == []
    assert not (models / "tiny").exists()  # no staging folder either: the export made the folder


def test_failed_parity_of_the_served_format_publishes_nothing(
    tiny_run: Path, tmp_path, monkeypatch
) -> None:
    monkeypatch.setitem(verify.PARITY_BOUNDS, "float32", verify.Bound(min_agreement=1.01))
    models = tmp_path / "models"
    with pytest.raises(export.ExportError, match="tflite_fp32"):
        export.export_run(tiny_run, models, "tiny")
    assert not (models / "tiny").exists()  # nothing published, nothing staged


def test_a_format_that_fails_parity_is_left_out_and_the_rest_published(
    tiny_run: Path, tmp_path, monkeypatch, capsys
) -> None:
    """A good model's fp16 file flipping near-ties must not cost the user the whole version."""
    monkeypatch.setitem(verify.PARITY_BOUNDS, "float16", verify.Bound(min_agreement=1.01))
    models = tmp_path / "models"
    argv = ["export", str(tiny_run), "--name", "tiny", "--models-dir", str(models)]
    assert cli.main(argv) == 0  # the served formats passed: success
    path = models / "tiny" / "1"
    manifest = artifacts.load_verified(path)
    assert set(manifest.formats) == {"saved_model", "tflite_fp32", "tflite_int8"}
    assert not (path / "model_fp16.tflite").exists()
    assert "model_fp16.tflite" not in {f.path for f in manifest.files}
    left_out = manifest.metrics["export_evaluation"]["left_out"]
    assert list(left_out) == ["tflite_fp16"] and "agreement" in left_out["tflite_fp16"][0]
    err = capsys.readouterr().err
    assert "left out tflite_fp16" in err


def test_formats_choose_the_litert_files(tiny_run: Path, tmp_path) -> None:
    models = tmp_path / "models"
    path = export.export_run(tiny_run, models, "tiny", formats=("tflite_int8",))
    manifest = artifacts.load_verified(path)
    assert set(manifest.formats) == {"saved_model", "tflite_fp32", "tflite_int8"}  # fp32 always
    assert export.parse_formats("fp16, int8") == ("tflite_fp16", "tflite_int8")
    with pytest.raises(ValueError, match="fp64"):
        export.parse_formats("fp32,fp64")


def test_incomplete_run_folder_is_refused(tiny_run: Path, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "calibration.npz").unlink()
    with pytest.raises(export.ExportError, match=r"calibration\.npz"):
        export.export_run(run, tmp_path / "models", "tiny")
    partial = tmp_path / ".run.partial"
    shutil.copytree(tiny_run, partial)
    with pytest.raises(export.ExportError, match="unfinished"):
        export.export_run(partial, tmp_path / "models", "tiny")


def test_library_versions_are_the_training_runs(tiny_run: Path, tmp_path: Path) -> None:
    """The manifest records what trained the model (the run's ``environment.json``), not the
    machine that exports it (docs/architecture.md, "Run folder")."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    trained_with = json.loads((run / "environment.json").read_text())
    trained_with.update(tensorflow="2.20.0", python="3.12.8", platform="macOS-15.1-arm64")
    (run / "environment.json").write_text(json.dumps(trained_with))
    path = export.export_run(
        run, tmp_path / "models", "tiny", verify=False, formats=("tflite_fp32",)
    )
    assert artifacts.load_verified(path).library_versions == trained_with


def test_export_cli_exit_codes(tiny_run: Path, tmp_path, capsys) -> None:
    models = tmp_path / "models"
    argv = ["export", str(tiny_run), "--name", "cli-model", "--models-dir", str(models)]
    assert cli.main([*argv, "--no-verify"]) == 0
    assert capsys.readouterr().out.strip() == str(models / "cli-model" / "1")
    assert (
        cli.main(["export", str(tmp_path / "nope"), "--name", "x", "--models-dir", str(models)])
        == 1
    )
    assert "run folder not found" in capsys.readouterr().err
    assert (
        cli.main(["export", str(tiny_run), "--name", "Bad Name!", "--models-dir", str(models)]) == 1
    )


def test_rgb_run_exports_with_an_rgb_contract(tmp_path) -> None:
    run = make_run(tmp_path / "rgb_run", shape=(8, 10, 3), classes=4, epochs=6)
    path = export.export_run(run, tmp_path / "models", "rgb")
    manifest = artifacts.load_verified(path)
    assert manifest.input.shape == (8, 10, 3) and manifest.input.color_mode == "rgb"
    _, meta = artifacts.read_embedded(path / "model_int8.tflite")
    assert meta["input"]["color_mode"] == "rgb" and meta["input"]["dtype"] == "uint8"


def test_train_with_export_publishes_a_version(tmp_path: Path, capsys) -> None:
    """``handserve train --export``: the CLI exports the finished run under the dataset's name."""
    argv = ["train", "--backbone", "dense", "--limit", "100", "--epochs", "1"]
    argv += ["--runs-dir", str(tmp_path / "runs"), "--run-name", "r", "--no-checkpoint"]
    assert cli.main([*argv, "--export", "--models-dir", str(tmp_path / "models")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"run: {tmp_path / 'runs' / 'r'}"
    assert out[-1] == f"export: {tmp_path / 'models' / 'digits' / '1'}"
    manifest = artifacts.load_verified(tmp_path / "models" / "digits" / "1")
    assert manifest.name == "digits" and "tflite_fp32" in manifest.formats


def test_exports_of_one_name_started_together_all_publish(tiny_run: Path, tmp_path: Path) -> None:
    """Two ``handserve export`` processes (two training Jobs on one volume): neither fails
    after its conversion; each publishes its own version, complete and verifiable."""
    import subprocess
    import sys

    models = tmp_path / "models"
    cmd = [sys.executable, "-m", "handserve_cli", "export", str(tiny_run), "--name", "race"]
    cmd += ["--models-dir", str(models), "--no-verify", "--formats", "fp32"]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    printed = sorted(out.strip().splitlines()[-1] for out, _ in outs)
    assert printed == [str(models / "race" / "1"), str(models / "race" / "2")]
    assert artifacts.list_versions(models, "race") == [1, 2]
    for version in (1, 2):
        manifest = artifacts.load_verified(models / "race" / str(version))
        assert manifest.version == version
        embedded = artifacts.read_embedded(models / "race" / str(version) / "model.tflite")
        assert embedded[1]["version"] == version  # the app sees the number it was published as
    assert not list((models / "race").glob(".staging-*"))


def test_grayscale_files_take_rgb_and_compute_pillows_luma(tiny_export: Path) -> None:
    """A colour frame through the file's RGB input equals the server's decoding (Pillow's
    ``convert("L")``) through the grey input, bit for bit in the float files."""
    from PIL import Image

    manifest = artifacts.read_manifest(tiny_export)
    rgb = np.random.default_rng(3).integers(0, 256, (16, 28, 28, 3), dtype=np.uint8)
    grey = np.stack([np.asarray(Image.fromarray(x, "RGB").convert("L"))[..., None] for x in rgb])
    for file in TFLITE_FILES:
        entry = next(f for f in manifest.formats.values() if f.path == file)
        assert entry.input_shape == [28, 28, 3]
        runtime = LiteRTRuntime(tiny_export / file)
        assert runtime.input_shape == (28, 28, 3)
        colour, decoded = runtime.predict(rgb), runtime.predict(grey)
        if entry.precision == "int8":  # an unrounded, quantized luma: close, not equal
            assert np.abs(colour - decoded).max() < 0.15
        else:
            np.testing.assert_array_equal(colour, decoded, err_msg=file)
    saved = manifest.formats["saved_model"]
    assert saved.input_shape == [28, 28, 1]  # the server's GPU path keeps the contract
