"""The models/NAME/VERSION contract: manifest validation, checksums, versions, atomic publish."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from handserve import artifacts
from handserve.artifacts import ArtifactError, FormatEntry, InputContract, Manifest
from tests.staging import staging


def _publish_fake(models: Path, name: str = "digits") -> Path:
    with staging(models, name) as tmp:
        (tmp / "model.tflite").write_bytes(b"\x00" * 64)
        (tmp / "labels.txt").write_text("a\nb\n")
        version = artifacts.next_version(models, name)
        manifest = Manifest(
            name=name,
            version=version,
            labels=["a", "b"],
            input=InputContract(28, 28, 1),
            formats={"tflite_float32": FormatEntry("model.tflite", "tflite", "float32")},
            files=artifacts.file_entries(tmp),
            created_at=artifacts.now_iso(),
        )
        artifacts.write_manifest(tmp, manifest)
        return artifacts.publish(tmp, models, name, version)


def test_publish_verify_and_round_trip(tmp_path: Path) -> None:
    vdir = _publish_fake(tmp_path)
    assert vdir == tmp_path / "digits" / "1"
    m = artifacts.load_verified(vdir)
    assert m.labels == ["a", "b"] and m.input.shape == (28, 28, 1)
    assert Manifest.from_dict(m.to_dict()) == m
    assert not [p for p in (tmp_path / "digits").iterdir() if p.name.startswith(".")]


def test_latest_is_the_highest_version(tmp_path: Path) -> None:
    for _ in range(3):
        _publish_fake(tmp_path)
    assert artifacts.list_versions(tmp_path, "digits") == [1, 2, 3]
    assert artifacts.version_dir(tmp_path, "digits") == tmp_path / "digits" / "3"
    assert artifacts.list_models(tmp_path) == {"digits": [1, 2, 3]}


def test_versions_are_immutable(tmp_path: Path) -> None:
    _publish_fake(tmp_path)
    with staging(tmp_path, "digits") as tmp, pytest.raises(ArtifactError, match="exists"):
        artifacts.publish(tmp, tmp_path, "digits", 1)


def test_failed_staging_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), staging(tmp_path, "digits") as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("conversion failed")
    assert list((tmp_path / "digits").iterdir()) == []
    assert artifacts.list_versions(tmp_path, "digits") == []


def test_changed_file_is_named(tmp_path: Path) -> None:
    vdir = _publish_fake(tmp_path)
    (vdir / "model.tflite").write_bytes(b"\x01" * 64)
    with pytest.raises(ArtifactError, match=r"model\.tflite.*sha256"):
        artifacts.load_verified(vdir)


def test_missing_file_is_named(tmp_path: Path) -> None:
    vdir = _publish_fake(tmp_path)
    (vdir / "labels.txt").unlink()
    with pytest.raises(ArtifactError, match=r"labels\.txt.*missing"):
        artifacts.load_verified(vdir)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: "{not json", "does not parse"),
        (lambda d: json.dumps({**d, "schema_version": 99}), "schema_version"),
        (lambda d: json.dumps({k: v for k, v in d.items() if k != "labels"}), "labels"),
        (lambda d: json.dumps({**d, "input": {**d["input"], "channels": 4}}), "channels"),
        (lambda d: json.dumps({**d, "version": 7}), "folder is digits/1"),
    ],
)
def test_bad_manifest_is_refused(tmp_path: Path, mutate, message: str) -> None:
    vdir = _publish_fake(tmp_path)
    path = vdir / "manifest.json"
    path.write_text(mutate(json.loads(path.read_text())))
    with pytest.raises(ArtifactError, match=message) as err:
        artifacts.load_verified(vdir)
    assert "manifest.json" in str(err.value)


@pytest.mark.parametrize("name", ["", "Digits", "../evil", "a b", "x" * 64])
def test_bad_model_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="model name"):
        artifacts.validate_name(name)


def test_contract_modules_do_not_import_tensorflow() -> None:
    code = (
        "import sys, handserve.artifacts, handserve.images, handserve.configs;"
        "import training.config;"
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_only_ascii_version_numbers_are_versions(tmp_path: Path) -> None:
    _publish_fake(tmp_path)
    (tmp_path / "digits" / "²").mkdir()  # str.isdigit() says True; int() would raise
    (tmp_path / "digits" / "007").mkdir()
    assert artifacts.list_versions(tmp_path, "digits") == [1]


def test_a_lost_publish_race_is_an_artifact_error(tmp_path: Path, monkeypatch) -> None:
    def taken(src, dst):
        raise OSError(39, "Directory not empty")

    monkeypatch.setattr(artifacts.os, "rename", taken)
    with staging(tmp_path, "digits") as tmp, pytest.raises(ArtifactError, match="again"):
        artifacts.publish(tmp, tmp_path, "digits", 1)


@pytest.mark.parametrize(
    ("text", "slug"),
    [
        ("sign_mnist", "sign_mnist"),
        ("My Photos", "my-photos"),
        ("__", "model"),
        ("Ünïcode!", "n-code"),
    ],
)
def test_slugify_makes_valid_names(text: str, slug: str) -> None:
    assert artifacts.slugify(text) == slug
    assert artifacts.validate_name(artifacts.slugify(text))
