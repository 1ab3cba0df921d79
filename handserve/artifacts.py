"""The model version folder: its one owner, between ``training/`` (writes) and ``service/`` (reads).

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

Everything about that folder lives here and is imported elsewhere: the file names, the table of
formats (:data:`FORMATS`: one row per runnable form, with its manifest key, file, precision and
the runtime that serves it), the manifest schema, the one verifier (:func:`load_verified`) and
publishing. Versions are immutable: an export is built in a hidden staging folder that reserves
its version number and is renamed into place in one step, so a reader never sees a half-written
version and two exporters never take the same number. This module imports no TensorFlow, so the
service can run LiteRT-only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import os
import re
import shutil
import typing
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from handserve import integers
from handserve.images import CROPS, ImageSpec, color_mode_for

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# The files of a version folder (the formats' files are in FORMATS).
MANIFEST = "manifest.json"
KERAS_MODEL = "model.keras"
LABELS = "labels.txt"
SAMPLES = "samples.npz"
# The files inside every .tflite file, in the zip appended to its flatbuffer (read_embedded).
EMBEDDED_LABELS = "labels.txt"
EMBEDDED_METADATA = "metadata.json"
REPORT_DIR = "report"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
#: The staging folder that reserves version N is named ``.staging-N`` (see staging_version).
_STAGING = ".staging-"
#: Published folders are readable by every user (a server may run as another uid than the
#: exporter: a host folder mounted into a container, a training Job and a Deployment).
DIR_MODE, FILE_MODE = 0o755, 0o644


@dataclass(frozen=True)
class ExportFormat:
    """One runnable form of the model: a row of :data:`FORMATS`.

    Attributes:
        key: its key in the manifest's ``formats``.
        path: its file (or folder) in the version folder.
        kind: ``FormatEntry.kind`` (``saved_model`` or ``tflite``).
        precision: ``float32``, ``float16`` or ``int8``; it selects the parity bound the export
            and ``handserve verify`` hold it to (``training.verify.PARITY_BOUNDS``).
        runtime: the runtime that runs it (``handserve.runtimes.DEFAULT_FORMAT``).
        flag: its name in ``handserve export --formats`` (None: always built).
        required: a version is not published without it (what the servers run by default).
    """

    key: str
    path: str
    kind: str
    precision: str
    runtime: str
    flag: str | None
    required: bool

    @property
    def main_file(self) -> str:
        """The file whose sha256 identifies the model (``/models``, ``handserve_model_info``)."""
        return f"{self.path}/saved_model.pb" if self.kind == "saved_model" else self.path

    def files(self, manifest: Manifest) -> list[str]:
        """The manifest's files this format consists of (a folder: every file under it)."""
        inside = [e.path for e in manifest.files if e.path.startswith(self.path + "/")]
        return inside or [self.main_file]


#: Every format an export can write, in the order it writes them. Adding a format is a row here,
#: a converter in training/ and, for a new kind of file, a runtime class (docs/architecture.md).
FORMATS: dict[str, ExportFormat] = {
    fmt.key: fmt
    for fmt in (
        # key, path, kind, precision, runtime, --formats flag, required
        ExportFormat(
            "saved_model", "saved_model", "saved_model", "float32", "savedmodel", None, True
        ),
        ExportFormat("tflite_fp32", "model.tflite", "tflite", "float32", "litert", "fp32", True),
        ExportFormat(
            "tflite_fp16", "model_fp16.tflite", "tflite", "float16", "litert", "fp16", False
        ),
        ExportFormat("tflite_int8", "model_int8.tflite", "tflite", "int8", "litert", "int8", False),
    )
}
#: The Open Inference Protocol's ``platform`` of a server running each runtime.
PLATFORMS = {"savedmodel": "tensorflow_savedmodel", "litert": "litert_tflite"}
#: Runtime name -> the format a server of that runtime runs by default (its first required row):
#: its keys are the runtime names (the classes that run them: handserve.runtimes.RUNTIMES).
DEFAULT_FORMAT: dict[str, ExportFormat] = {}
for _fmt in FORMATS.values():
    if _fmt.required:
        DEFAULT_FORMAT.setdefault(_fmt.runtime, _fmt)
SAVED_MODEL = FORMATS["saved_model"]
TFLITE_FP32 = FORMATS["tflite_fp32"]


def served_format(runtime: str, litert_file: str | None = None) -> ExportFormat:
    """The format a server of ``runtime`` runs: its default, or the LiteRT file it was told.

    Raises:
        ValueError: an unknown runtime.
    """
    if runtime not in DEFAULT_FORMAT:
        raise ValueError(f"unknown runtime {runtime!r}; choose from {', '.join(DEFAULT_FORMAT)}")
    default = DEFAULT_FORMAT[runtime]
    if litert_file is None or default.kind != "tflite" or litert_file == default.path:
        return default
    known = [f for f in FORMATS.values() if f.path == litert_file and f.runtime == runtime]
    return known[0] if known else dataclasses.replace(default, key=litert_file, path=litert_file)


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
    #: "hand": images are cropped to the hand before the resize (handserve.hands, one rule for
    #: training, serving and apps); None: the whole image. Absent in older manifests: None.
    crop: str | None = None

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
        if self.crop is not None and self.crop not in CROPS:
            raise ValueError(f"input.crop must be null or one of {list(CROPS)}, got {self.crop!r}")

    @property
    def image_spec(self) -> ImageSpec:
        return ImageSpec(self.height, self.width, self.channels, self.crop)

    def accepts(self, shape: tuple[int, ...]) -> bool:
        """Whether a file whose input tensor is ``shape`` (H, W, C) can run this contract's
        images: the same size, and the same channels, or 3 for a grayscale contract (the mobile
        files of a grayscale model take RGB, as task libraries feed it, and compute the luma in
        their graph; a runtime repeats the grey channel for them, which gives it back exactly)."""
        h, w, c = shape
        return (h, w) == (self.height, self.width) and (
            c == self.channels or (self.channels == 1 and c == 3)
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)


#: ``HandFeatures.kind`` values (:mod:`handserve.hand_features`).
HAND_FEATURE_KINDS = ("landmarks", "embedder")


@dataclass(frozen=True)
class HandFeatures:
    """What a hand-feature head takes: a photo's hand, found by MediaPipe's hand models and
    turned into ``size`` floats by :mod:`handserve.hand_features` (docs/training.md, "Hand
    features"). The manifest's ``input`` of such a version, in place of an image contract.

    Attributes:
        kind: ``landmarks`` (normalised landmarks) or ``embedder`` (MediaPipe's gesture
            embedder on them).
        size: floats per hand, the head's input tensor ``[N, size]`` (float32 in every file).
        hand_models: the MediaPipe model files the hands were found with, by name, with their
            sha256 (those :mod:`handserve.hands` checks). A server may run MediaPipe's official
            ``hand_landmarker.task`` instead (``HANDSERVE_HAND_MODELS``): same models, not
            checksummed by this project.
        embedder: the version's own copy of the gesture embedder (a file of the version, so
            listed with its sha256 in ``files``); None for ``landmarks``.
        landmarks: the convention of a hand sent as landmarks instead of a photo: MediaPipe
            HandLandmarker's fields (``hand_features.pack``).
    """

    kind: str
    size: int
    hand_models: dict[str, str]
    embedder: str | None = None
    landmarks: str = "mediapipe_hand_landmarker"
    dtype: str = "float32"
    crop: str | None = None  # never an image crop: lets code that asks about crops ask

    def __post_init__(self) -> None:
        if self.kind not in HAND_FEATURE_KINDS:
            raise ValueError(f"input.kind must be one of {list(HAND_FEATURE_KINDS)}")
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size <= 0:
            raise ValueError(f"input.size must be a positive integer, got {self.size!r}")
        if (self.kind == "embedder") != (self.embedder is not None):
            raise ValueError("input.embedder names the embedder file exactly for kind embedder")
        if not self.hand_models:
            raise ValueError("input.hand_models must name the hand models")

    @property
    def shape(self) -> tuple[int]:
        return (self.size,)

    def accepts(self, shape: tuple[int, ...]) -> bool:
        return tuple(shape) == self.shape

    def to_dict(self) -> dict[str, Any]:
        return {"type": "hand_features", **asdict(self)}


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
    #: The file's input tensor (H, W, C); None in versions exported before it was recorded,
    #: which means the contract's shape. See InputContract.accepts.
    input_shape: list[int] | None = None


@dataclass(frozen=True)
class Manifest:
    """``manifest.json``: everything a server or an app needs to trust and use a version."""

    name: str
    version: int
    labels: list[str]
    #: What the model takes: an image contract, or a hand-feature head's contract (read them
    #: through :attr:`image` and :attr:`hand_features`, which say which it is).
    input: InputContract | HandFeatures
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

    def input_shape_of(self, entry: FormatEntry) -> tuple[int, ...]:
        """The input tensor shape (H, W, C), or (size,) of a hand head, of one of its formats."""
        if entry.input_shape is None:
            return self.input.shape
        return tuple(entry.input_shape)

    @property
    def hand_features(self) -> HandFeatures | None:
        """The hand-feature contract of a hand head's version, else None (an image model)."""
        return self.input if isinstance(self.input, HandFeatures) else None

    @property
    def image(self) -> InputContract:
        """The image contract of an image model's version.

        Raises:
            ValueError: a hand-feature head's version, which takes features, not images (the
                callers that can meet one ask :attr:`hand_features` first).
        """
        if isinstance(self.input, HandFeatures):
            raise ValueError(f"{self.name}/{self.version} is a hand-feature head: no image input")
        return self.input

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        hand = self.hand_features
        if hand is not None:
            data["input"] = hand.to_dict()
        else:
            data["input"]["value_range"] = list(self.image.value_range)
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
            contract: InputContract | HandFeatures
            if inp.pop("type", "image") == "hand_features":
                contract = HandFeatures(**inp)
            else:
                inp["value_range"] = tuple(inp.get("value_range", (0.0, 255.0)))
                contract = InputContract(**inp)
            rank = len(contract.shape)
            formats = {k: FormatEntry(**v) for k, v in dict(data["formats"]).items()}
            for key, entry in formats.items():
                shape = entry.input_shape
                if shape is not None and (
                    not isinstance(shape, list)
                    or len(shape) != rank
                    or not all(isinstance(d, int) and d > 0 for d in shape)
                ):
                    want = "[H, W, C]" if rank == 3 else "[size]"
                    raise ValueError(f"formats.{key}.input_shape must be {want}, got {shape!r}")
            files = [FileEntry(**f) for f in data["files"]]
            version = data["version"]
            if not isinstance(version, int) or version <= 0:
                raise ValueError(f"version must be a positive integer, got {version!r}")
            return cls(
                name=str(data["name"]),
                version=version,
                labels=labels,
                input=typing.cast(InputContract, contract),  # a HandFeatures: see Manifest.input
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


def load_verified(
    version_dir: Path, runtime: str | None = None, litert_file: str | None = None
) -> Manifest:
    """The one check of a version before it is trusted: its manifest, and every checksum.

    Args:
        version_dir: ``models/NAME/VERSION``; the manifest must name this folder.
        runtime: None checks the whole version (every listed file must be there): what export,
            ``handserve verify`` and the tools do. A runtime name checks what a server of that
            runtime trusts: the files it runs must be there and listed, every other file that
            is there must match, and absent ones may be absent (a Bento packs only what its
            runtime reads, see ``bentofile.yaml``).
        litert_file: the ``.tflite`` a LiteRT server runs (default: :data:`TFLITE_FP32`'s).

    Raises:
        ArtifactError: naming the missing or changed file, or a manifest for another folder.
        ValueError: an unknown runtime.
    """
    version_dir = Path(version_dir)
    manifest = read_manifest(version_dir)
    said = (validate_name(manifest.name), str(manifest.version))
    if said != (version_dir.parent.name, version_dir.name):
        raise ArtifactError(
            version_dir / MANIFEST,
            f"manifest says {said[0]}/{said[1]} but the folder is "
            f"{version_dir.parent.name}/{version_dir.name}",
        )
    if runtime is None:
        verify_files(version_dir, manifest)
        return manifest
    listed = {e.path for e in manifest.files}
    needed = served_format(runtime, litert_file).files(manifest)
    hand = manifest.hand_features
    if hand is not None and hand.embedder is not None:
        needed = [*needed, hand.embedder]  # a hand head's features need the version's embedder
    for path in needed:
        if path not in listed:
            raise ArtifactError(
                version_dir / path, f"{runtime} needs it, but the manifest has no checksum for it"
            )
        if not (version_dir / path).is_file():
            raise ArtifactError(version_dir / path, f"{runtime} needs it, but it is missing")
    present = [e for e in manifest.files if (version_dir / e.path).is_file()]
    here = {e.path for e in present}
    verify_files(
        version_dir,
        dataclasses.replace(
            manifest,
            files=present,
            formats={
                k: f for k, f in manifest.formats.items() if f.path in here or f.kind != "tflite"
            },
        ),
    )
    return manifest


# ---------------------------------------------------------------------------------------------
# Versions


def list_versions(models_dir: Path, name: str) -> list[int]:
    """Published versions of ``name``, ascending; hidden staging folders are not versions."""
    root = Path(models_dir) / name
    if not root.is_dir():
        return []
    return sorted(n for p in root.iterdir() if p.is_dir() and (n := version_number(p.name)))


def _reserved_versions(models_dir: Path, name: str) -> list[int]:
    """Version numbers held by staging folders (exports under way, or killed mid-way)."""
    root = Path(models_dir) / name
    if not root.is_dir():
        return []
    return [
        n
        for p in root.iterdir()
        if p.name.startswith(_STAGING) and (n := version_number(p.name[len(_STAGING) :]))
    ]


def read_embedded(tflite_file: Path | str) -> tuple[list[str], dict[str, Any]]:
    """The labels and metadata that travel inside a ``.tflite`` file (what an app reads).

    They are files of a zip archive appended to the flatbuffer: the interpreter ignores the
    trailing bytes, any zip reader finds the archive from the end of the file.
    """
    with zipfile.ZipFile(tflite_file) as zf:
        labels = [x for x in zf.read(EMBEDDED_LABELS).decode().splitlines() if x]
        metadata = json.loads(zf.read(EMBEDDED_METADATA))
    return labels, metadata


def version_number(name: str) -> int | None:
    """A version folder's number (``1``, ``12``), or None for any other name (``01``, ``²``)."""
    number = integers.ascii_int(name)
    return number if number and not name.startswith("0") else None


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


def first_version_dir(models_dir: Path, name: str | None = None) -> Path:
    """The latest version of ``name``, or of the first model by name when ``name`` is None:
    what a tool given only a models folder works on (the benchmarks).

    Raises:
        ArtifactError: the folder holds no published model (or no ``name``).
    """
    if name is None:
        names = sorted(list_models(models_dir))
        if not names:
            raise ArtifactError(
                Path(models_dir), "no published model; run `handserve train --export`"
            )
        name = names[0]
    return version_dir(models_dir, name)


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


def next_version(models_dir: Path, name: str) -> int:
    """One above every published and every reserved number: numbers only grow."""
    taken = list_versions(models_dir, name) + _reserved_versions(models_dir, name)
    return max(taken, default=0) + 1


@contextlib.contextmanager
def staging_version(models_dir: Path, name: str) -> Iterator[tuple[Path, int]]:
    """A staging folder that reserves the next version number, removed on any failure.

    The folder is ``models/NAME/.staging-N``: ``mkdir`` is atomic, so of two exporters that
    pick the same N at once one gets it and the other takes the next number, and every
    concurrent export of a name publishes, each under its own version. The caller writes the
    version into the folder (knowing N, which the manifest and embedded metadata record) and
    calls :func:`publish`. A folder left by a killed export keeps its number unused.
    """
    root = Path(models_dir) / validate_name(name)
    created = _mkdirs_readable(root)
    while True:
        version = next_version(models_dir, name)
        tmp = root / f"{_STAGING}{version}"
        try:
            tmp.mkdir()
        except FileExistsError:
            continue  # another export reserved it a moment ago
        except FileNotFoundError:  # a failed export of a new name removed root meanwhile
            created = _mkdirs_readable(root)
            continue
        if (root / str(version)).exists():  # its holder published it before we looked
            tmp.rmdir()
            continue
        break
    try:
        yield tmp, version
    except OSError as exc:
        # A write that failed without naming its file (a full disk in the middle of a write)
        # names the folder it was writing, so the user learns where (handserve_cli.failures).
        if exc.filename is None:
            exc.filename = str(tmp)
        raise
    else:
        created = []  # published: the folders made for it stay
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        for folder in reversed(created):  # nothing left behind: not even an empty NAME/
            with contextlib.suppress(OSError):  # not empty: another export is using it
                folder.rmdir()


def _mkdirs_readable(folder: Path) -> list[Path]:
    """``mkdir -p`` whose new folders are 0755 whatever the umask, so a server running as
    another user can reach the versions inside (folders that exist are left as they are).
    Returns the folders it made, outermost first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    made = []
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            path.mkdir()
            made.append(path)
            path.chmod(DIR_MODE)
    return made


def _make_readable(folder: Path) -> None:
    """Directories 0755 and files 0644 below ``folder``, whatever the umask or ``mkdtemp`` set."""
    folder.chmod(DIR_MODE)
    for path in folder.rglob("*"):
        if not path.is_symlink():
            path.chmod(DIR_MODE if path.is_dir() else FILE_MODE)


def publish(tmp: Path, models_dir: Path, name: str, version: int) -> Path:
    """Make a finished staging folder readable by all and rename it to ``models/NAME/VERSION``.

    The rename is one step, and ``os.rename`` onto an existing non-empty folder fails, so two
    exports can never overwrite each other (with :func:`staging_version` they never collide).
    """
    target = Path(models_dir) / name / str(version)
    if target.exists():
        raise ArtifactError(target, "version already exists; versions are immutable")
    _make_readable(Path(tmp))
    try:
        os.rename(tmp, target)
    except OSError as exc:  # another export published this number between check and rename
        raise ArtifactError(target, f"could not publish ({exc.strerror}); export again") from exc
    log.info("published %s", target)
    return target


def read_labels(path: Path) -> list[str]:
    return [line for line in Path(path).read_text().splitlines() if line]
