"""Exporting a hand-feature run (training.hand_export): the version every export writes, with a
hand-feature input contract, its parity, and a server's refusal until the data plane serves it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from handserve import artifacts, hand_features, hands
from handserve.artifacts import HandFeatures
from handserve_cli import main

from ..model.test_hand_head import sign_folders  # noqa: F401 - the fixture

pytestmark = pytest.mark.slow

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "asl_photos.yaml"


def _train_and_export(
    folders: tuple[Path, Path], tmp_path: Path, *extra: str
) -> tuple[int, Path, Path]:
    code = main(
        [
            "train",
            "--config",
            str(CONFIG),
            "--data-dir",
            str(folders[0]),
            "--extra-data-dirs",
            str(folders[1]),
            "--epochs",
            "6",
            "--runs-dir",
            str(tmp_path / "runs"),
            "--run-name",
            "hands",
            "--models-dir",
            str(tmp_path / "models"),
            "--export-name",
            "signs",
            "--export",
            *extra,
        ]
    )
    return code, tmp_path / "runs" / "hands", tmp_path / "models" / "signs" / "1"


def test_a_hand_run_exports_every_format_with_a_hand_feature_contract(
    sign_folders: tuple[Path, Path],  # noqa: F811 - the fixture
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from ai_edge_litert.interpreter import Interpreter

    code, _, version = _train_and_export(sign_folders, tmp_path)
    assert code == 0, capsys.readouterr().err
    manifest = artifacts.load_verified(version)  # every checksum
    contract = manifest.hand_features
    assert isinstance(contract, HandFeatures)
    assert (contract.kind, contract.size, contract.embedder) == ("landmarks", 126, None)
    assert contract.hand_models == hands.MODEL_SHA256
    assert set(manifest.formats) == {"saved_model", "tflite_fp32", "tflite_fp16", "tflite_int8"}
    assert all(
        f.input_shape == [126] and f.input_dtype == "float32" for f in manifest.formats.values()
    )
    assert manifest.metrics["export_evaluation"]["left_out"] == {}
    # the phone's file gives the server's (Keras') answer on the same hands
    import keras

    with np.load(version / "samples.npz") as samples:
        feats = hand_features.landmark_features(samples["x"])
    want = keras.models.load_model(version / "model.keras").predict_on_batch(feats)
    interp = Interpreter(model_path=str(version / "model.tflite"))
    interp.resize_tensor_input(interp.get_input_details()[0]["index"], list(feats.shape))
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], feats)
    interp.invoke()
    got = interp.get_tensor(interp.get_output_details()[0]["index"])
    np.testing.assert_allclose(got, want, atol=1e-5)
    labels, meta = artifacts.read_embedded(version / "model_int8.tflite")
    assert labels == ["A", "B", "C"]
    assert meta["input"]["type"] == "hand_features" and meta["input"]["tensor_shape"] == [126]
    # the manifest reads back as written
    again = json.loads((version / "manifest.json").read_text())
    assert again["input"]["type"] == "hand_features"
    # handserve verify: the sample hands, and every hand in a folder of photos
    from training.verify import verify_version

    report = verify_version(version)
    assert not report.failures and report.images == 10  # the 10% test split, as samples
    report = verify_version(version, data_dir=str(sign_folders[1]))
    assert not report.failures and report.images == 14  # the photo without a hand left out
    assert report.results[0].accuracy >= 0.9
    # a server verifies it as every version (tests/service/test_hand_serving.py serves it)
    assert artifacts.load_verified(version, "litert").hand_features == contract


def test_an_embedder_run_carries_its_checksummed_embedder(
    sign_folders: tuple[Path, Path],  # noqa: F811 - the fixture
    tmp_path: Path,
    shared_data: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    weights = shared_data.parent / "weights" / "gesture_embedder.tflite"
    if not weights.is_file():
        pytest.skip(f"{weights} is absent")
    code, run, version = _train_and_export(
        sign_folders, tmp_path, "--backbone", "hand_embedder", "--weights", str(weights)
    )
    assert code == 0, capsys.readouterr().err
    manifest = artifacts.load_verified(version)
    contract = manifest.hand_features
    assert contract is not None and (contract.kind, contract.size) == ("embedder", 128)
    listed = {f.path: f.sha256 for f in manifest.files}
    assert listed[hand_features.EMBEDDER_FILE] == artifacts.sha256_file(weights)
    # a changed embedder copy in the run folder is refused at export
    (run / hand_features.EMBEDDER_FILE).write_bytes(b"another model")
    from training.export import ExportError, export_run

    with pytest.raises(ExportError, match="differs from the embedder the run was trained with"):
        export_run(run, tmp_path / "models", "signs")
    assert sorted(p.name for p in (tmp_path / "models" / "signs").iterdir()) == ["1"]
