"""The model folder contract between ``training/`` (writes) and ``service/`` (reads).

Layout, documented in ``docs/artifacts.md``::

    models/NAME/VERSION/          VERSION is a positive integer; "latest" is the highest one
        manifest.json             this module's schema (SCHEMA_VERSION)
        saved_model/              TensorFlow SavedModel, signature "serving_default"
        model.tflite              LiteRT float32, built-in operators only
        model_fp16.tflite         LiteRT, float16 weights
        model_int8.tflite         LiteRT, full-integer quantized
        model.keras               Keras model, to fine-tune again
        labels.txt                one class name per line, index order
        report/                   the training run's report (metrics.json, PNGs, config, history)
        samples.npz               labelled sample images (x uint8 NHWC, y int) for ``verify``

Versions are immutable: an export is built in a hidden temporary folder beside its target and
renamed into place in one step, so a reader never sees a half-written version. This module
imports no TensorFlow, so the service can run LiteRT-only.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from handserve.images import ImageSpec, color_mode_for

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_VERSION_RE = re.compile(r"^[1-9][0-9]{0,17}$")  # ASCII only: str.isdigit() accepts "²"


class ArtifactError(Exception):
    """A model folder that cannot be trusted: names the file and says what is wrong."""

    def __init__(self, path: Path | str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = Path(path)
        self.message = message


@dataclass(frozen=True)
class InputContract:
    """What the model takes: a batch of images at the dataset's native size.

    Serving only decodes, converts to ``color_mode`` and resizes to ``height`` × ``width``;
    the model does any backbone-specific scaling itself.
    """

    height: int
    width: int
    channels: int
    dtype: str = "float32"  # the SavedModel / float LiteRT input tensor type
    value_range: tuple[float, float] = (0.0, 255.0)  # raw pixel values, not normalised
    color_mode: str = "grayscale"  # "grayscale" (channels 1) or "rgb" (channels 3)

    def __post_init__(self) -> None:
        for key in ("height", "width", "channels"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"input.{key} must be a positive integer, got {value!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"input.channels must be 1 or 3, got {self.channels}")
        expected = color_mode_for(self.channels)
        if self.color_mode != expected:
            raise ValueError(
                f"input.color_mode {self.color_mode!r} does not match channels={self.channels}"
            )

    @property
    def image_spec(self) -> ImageSpec:
        return ImageSpec(self.height, self.width, self.channels)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)


@dataclass(frozen=True)
class FileEntry:
    """One file of the version folder, relative to it, with its size and checksum."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class FormatEntry:
    """One runnable form of the model (``saved_model`` or a ``.tflite`` file).

    ``input_dtype``/``output_dtype`` are the tensor types a caller feeds and reads; for a
    quantized model with integer input, ``input_scale``/``input_zero_point`` say how to quantize
    (``q = x / scale + zero_point``) and the output pair how to dequantize.
    """

    path: str
    kind: str  # "saved_model" or "tflite"
    precision: str  # "float32", "float16" or "int8"
    input_dtype: str = "float32"
    output_dtype: str = "float32"
    input_scale: float | None = None
    input_zero_point: int | None = None
    output_scale: float | None = None
    output_zero_point: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # on the test split


@dataclass(frozen=True)
class Manifest:
    """``manifest.json``: everything a server or an app needs to trust and use a version."""

    name: str
    version: int
    labels: list[str]
    input: InputContract
    formats: dict[str, FormatEntry]
    files: list[FileEntry]
    created_at: str = ""
    backbone: dict[str, Any] = field(default_factory=dict)  # name, weights source
    training: dict[str, Any] = field(default_factory=dict)  # the resolved training config
    metrics: dict[str, Any] = field(default_factory=dict)  # run metrics (val/test)
    library_versions: dict[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["input"]["value_range"] = list(self.input.value_range)
        return data

    @classmethod
    def from_dict(cls, data: Any, *, source: Path | str = MANIFEST) -> Manifest:
        """Validate and build; every problem names the field, raising :class:`ArtifactError`."""
        if not isinstance(data, dict):
            raise ArtifactError(source, "manifest is not a JSON object")
        try:
            if data.get("schema_version") != SCHEMA_VERSION:
                raise ValueError(
                    f"schema_version {data.get('schema_version')!r} is not supported "
                    f"(this handserve reads {SCHEMA_VERSION})"
                )
            labels = data["labels"]
            if (
                not isinstance(labels, list)
                or not labels
                or not all(isinstance(x, str) for x in labels)
            ):
                raise ValueError("labels must be a non-empty list of strings")
            inp = dict(data["input"])
            inp["value_range"] = tuple(inp.get("value_range", (0.0, 255.0)))
            contract = InputContract(**inp)
            formats = {k: FormatEntry(**v) for k, v in dict(data["formats"]).items()}
            files = [FileEntry(**f) for f in data["files"]]
            version = data["version"]
            if not isinstance(version, int) or version <= 0:
                raise ValueError(f"version must be a positive integer, got {version!r}")
            return cls(
                name=str(data["name"]),
                version=version,
                labels=labels,
                input=contract,
                formats=formats,
                files=files,
                created_at=str(data.get("created_at", "")),
                backbone=dict(data.get("backbone", {})),
                training=dict(data.get("training", {})),
                metrics=dict(data.get("metrics", {})),
                library_versions=dict(data.get("library_versions", {})),
            )
        except KeyError as exc:
            raise ArtifactError(source, f"manifest is missing the field {exc.args[0]!r}") from exc
        except (TypeError, ValueError) as exc:
            raise ArtifactError(source, f"manifest is invalid: {exc}") from exc


def validate_name(name: str) -> str:
    """Model names become folder names and URL parameters: keep them lower-case and plain."""
    if not _NAME_RE.match(name):
        raise ValueError(
            f"model name {name!r} must be 1-63 characters of a-z, 0-9, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def slugify(text: str) -> str:
    """A valid model name from free text (a dataset or folder name): "My Photos" -> "my-photos"."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")[:63]
    return slug or "model"


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entries(version_dir: Path) -> list[FileEntry]:
    """Checksums of every file under ``version_dir`` except the manifest, sorted by path."""
    entries = []
    for p in sorted(version_dir.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            rel = p.relative_to(version_dir).as_posix()
            entries.append(FileEntry(rel, p.stat().st_size, sha256_file(p)))
    return entries


def write_manifest(version_dir: Path, manifest: Manifest) -> Path:
    path = version_dir / MANIFEST
    path.write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=False) + "\n")
    return path


def read_manifest(version_dir: Path) -> Manifest:
    """Parse and validate ``manifest.json`` of a version folder."""
    path = Path(version_dir) / MANIFEST
    if not path.is_file():
        raise ArtifactError(path, "manifest.json is missing")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(path, f"manifest does not parse: {exc}") from exc
    return Manifest.from_dict(data, source=path)


def verify_files(version_dir: Path, manifest: Manifest) -> None:
    """Check every file's size and sha256 against the manifest, and that no file is missing.

    Raises:
        ArtifactError: naming the first file that is missing or changed.
    """
    version_dir = Path(version_dir)
    for entry in manifest.files:
        path = version_dir / entry.path
        if not path.is_file():
            raise ArtifactError(path, "file listed in the manifest is missing")
        if path.stat().st_size != entry.size:
            raise ArtifactError(
                path, f"size {path.stat().st_size} differs from the manifest's {entry.size}"
            )
        if sha256_file(path) != entry.sha256:
            raise ArtifactError(path, "sha256 differs from the manifest: the file was changed")
    listed = {e.path for e in manifest.files}
    for fmt in manifest.formats.values():
        if fmt.kind == "tflite" and fmt.path not in listed:
            raise ArtifactError(version_dir / fmt.path, "format file has no checksum in manifest")


def load_verified(version_dir: Path) -> Manifest:
    """Read the manifest and check every checksum: what a server does before trusting a model."""
    manifest = read_manifest(version_dir)
    expected = (validate_name(manifest.name), manifest.version)
    actual = (Path(version_dir).parent.name, Path(version_dir).name)
    if (expected[0], str(expected[1])) != actual:
        raise ArtifactError(
            Path(version_dir) / MANIFEST,
            f"manifest says {expected[0]}/{expected[1]} but the folder is {actual[0]}/{actual[1]}",
        )
    verify_files(version_dir, manifest)
    return manifest


# ---------------------------------------------------------------------------------------------
# Versions


def list_versions(models_dir: Path, name: str) -> list[int]:
    """Published versions of ``name``, ascending; hidden staging folders are not versions."""
    root = Path(models_dir) / name
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and _VERSION_RE.match(p.name))


def list_models(models_dir: Path) -> dict[str, list[int]]:
    """Every model name in ``models_dir`` with its published versions."""
    root = Path(models_dir)
    if not root.is_dir():
        return {}
    out = {}
    for p in sorted(root.iterdir()):
        if p.is_dir() and not p.name.startswith("."):
            versions = list_versions(root, p.name)
            if versions:
                out[p.name] = versions
    return out


def latest_version(models_dir: Path, name: str) -> int | None:
    """The highest version number: numbers only grow, so it is the newest export."""
    versions = list_versions(models_dir, name)
    return versions[-1] if versions else None


def version_dir(models_dir: Path, name: str, version: int | None = None) -> Path:
    """The folder of ``name`` at ``version`` (``None``: latest); ArtifactError if absent."""
    if version is None:
        version = latest_version(models_dir, name)
        if version is None:
            raise ArtifactError(Path(models_dir) / name, "no published version of this model")
    path = Path(models_dir) / name / str(version)
    if not path.is_dir():
        raise ArtifactError(path, "no such model version")
    return path


@contextlib.contextmanager
def staging(models_dir: Path, name: str) -> Iterator[Path]:
    """A hidden temporary folder beside ``models/NAME/`` versions, removed on any failure.

    The caller writes the version into it and then calls :func:`publish`. If the block raises
    (or the process is interrupted, including by KeyboardInterrupt) the folder is deleted and no
    version appears.
    """
    root = Path(models_dir) / validate_name(name)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def next_version(models_dir: Path, name: str) -> int:
    return (latest_version(models_dir, name) or 0) + 1


def publish(tmp: Path, models_dir: Path, name: str, version: int) -> Path:
    """Rename a finished staging folder to ``models/NAME/VERSION`` in one step.

    ``os.rename`` onto an existing non-empty folder fails, so two concurrent exports cannot
    overwrite each other: the loser gets an error rather than a silently replaced version.
    """
    target = Path(models_dir) / name / str(version)
    if target.exists():
        raise ArtifactError(target, "version already exists; versions are immutable")
    try:
        os.rename(tmp, target)
    except OSError as exc:  # another export published this number between check and rename
        raise ArtifactError(target, f"could not publish ({exc.strerror}); export again") from exc
    log.info("published %s", target)
    return target


def read_labels(path: Path) -> list[str]:
    return [line for line in Path(path).read_text().splitlines() if line]
