"""A training run's folder, ``runs/NAME/``: the one list of its files and their readers/writers.

``training.train`` writes a run folder; ``training.evaluate`` reads its input size back,
``training.export`` reads all of it into a model version, ``training.verify`` reads the test
split settings it saved. All of them name the files and parse the JSON here, so the layout
(docs/architecture.md, "Run folder") is defined once. This module imports no TensorFlow.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import handserve
from handserve import artifacts
from handserve.artifacts import InputContract
from handserve.images import color_mode_for

CONFIG = "config.json"
DATASET = "dataset.json"
ENVIRONMENT = "environment.json"
HISTORY = "history.json"
METRICS = "metrics.json"
BACKBONE = "backbone.json"
CONFUSION_PNG = "confusion_matrix.png"
CURVES_PNG = "learning_curves.png"
# The three files an export copies into the version folder keep the model folder's names.
LABELS = artifacts.LABELS
MODEL = artifacts.KERAS_MODEL
SAMPLES = artifacts.SAMPLES
CALIBRATION = "calibration.npz"
#: Best-by-val_loss model written during training when ``cfg.checkpoint`` is on (not required).
CHECKPOINT = "checkpoint.keras"

#: Files every finished run folder holds.
RUN_FILES = (
    CONFIG,
    DATASET,
    ENVIRONMENT,
    HISTORY,
    METRICS,
    CONFUSION_PNG,
    CURVES_PNG,
    LABELS,
    MODEL,
    BACKBONE,
    SAMPLES,
    CALIBRATION,
)
#: What an export cannot do without (a run from an older trainer may lack the others).
EXPORT_NEEDS = (MODEL, LABELS, CONFIG, DATASET, BACKBONE, METRICS, SAMPLES, CALIBRATION)
#: The JSON files copied into a version's ``report/`` (with every PNG).
REPORT_FILES = (CONFIG, HISTORY, METRICS, DATASET, ENVIRONMENT, BACKBONE)


class RunFolderError(ValueError):
    """A run folder file that is missing or does not parse; the message names the file."""


def input_contract(
    shape: tuple[int, int, int] | list[int], crop: str | None = None
) -> InputContract:
    """The model's input contract for images of ``(H, W, C)``: the one place it is built."""
    h, w, c = (int(v) for v in shape)
    return InputContract(height=h, width=w, channels=c, color_mode=color_mode_for(c), crop=crop)


def environment() -> dict[str, str]:
    """Library versions of this process, saved as the run's ``environment.json`` when training
    ends; an export copies that record (not its own machine's) into the manifest."""
    import keras
    import tensorflow as tf

    versions = {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "handserve": handserve.__version__,
        "platform": platform.platform(),
    }
    try:
        versions["ai_edge_litert"] = importlib.metadata.version("ai-edge-litert")
    except importlib.metadata.PackageNotFoundError:
        versions["ai_edge_litert"] = "unknown"
    return versions


@dataclass(frozen=True)
class DatasetInfo:
    """``dataset.json``: what the model was trained on, and so what it takes as input."""

    name: str
    source: str
    class_names: list[str]
    input_shape: tuple[int, int, int]
    sizes: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    crop: str | None = None  # the input contract's crop ("hand"); None in older runs
    no_hand: list[str] = field(default_factory=list)  # files with no hand found (--crop-hands)

    @property
    def color_mode(self) -> str:
        return color_mode_for(self.input_shape[-1])

    @property
    def contract(self) -> InputContract:
        return input_contract(self.input_shape, self.crop)

    @classmethod
    def of(cls, ds: Any) -> DatasetInfo:
        """From a loaded :class:`training.data.Dataset`."""
        return cls(
            name=ds.name,
            source=str(ds.source),
            class_names=list(ds.class_names),
            input_shape=ds.input_shape,
            sizes={
                "train": len(ds.train.y),
                "val": len(ds.val.y),
                "test": 0 if ds.test is None else len(ds.test.y),
            },
            skipped=int(ds.skipped),
            crop=ds.crop,
            no_hand=list(ds.no_hand),
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_shape"] = list(self.input_shape)
        data["color_mode"] = self.color_mode
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], path: Path) -> DatasetInfo:
        try:
            h, w, c = (int(v) for v in data["input_shape"])
            info = cls(
                name=str(data.get("name", "")),
                source=str(data.get("source", "")),
                class_names=[str(n) for n in data.get("class_names") or []],
                input_shape=(h, w, c),
                sizes=dict(data.get("sizes") or {}),
                skipped=int(data.get("skipped", 0)),
                crop=data.get("crop"),
                no_hand=[str(p) for p in data.get("no_hand") or []],
            )
            saved = data.get("color_mode")
            if saved is not None and saved != info.color_mode:
                raise ValueError(f"color_mode {saved!r} does not fit {c} channel(s)")
            info.contract  # noqa: B018 - checks the shape is one a model can take
        except (KeyError, TypeError, ValueError) as exc:
            raise RunFolderError(f"{path}: bad input_shape/color_mode: {exc}") from exc
        return info


@dataclass(frozen=True)
class BackboneInfo:
    """``backbone.json``: the backbone, its weights, the size it ran at, the augmentation."""

    name: str
    weights: str
    backbone_size: int | None
    augmentation: dict[str, Any]


@dataclass(frozen=True)
class RunFolder:
    """Reads and writes the files of the run folder at ``path``."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def missing(self, names: tuple[str, ...] = RUN_FILES) -> list[str]:
        return [name for name in names if not (self.path / name).is_file()]

    # --- JSON files
    def write_json(self, name: str, data: Any) -> None:
        (self.path / name).write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")

    def read_json(self, name: str) -> dict[str, Any]:
        path = self.path / name
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RunFolderError(f"{path}: does not parse: {exc}") from exc
        if not isinstance(data, dict):
            raise RunFolderError(f"{path}: expected a JSON object")
        return data

    def write_config(self, config: dict[str, Any]) -> None:
        self.write_json(CONFIG, config)

    def read_config(self) -> dict[str, Any]:
        return self.read_json(CONFIG)

    def write_dataset(self, info: DatasetInfo) -> None:
        self.write_json(DATASET, info.to_json())

    def write_environment(self) -> None:
        self.write_json(ENVIRONMENT, environment())

    def read_environment(self) -> dict[str, str]:
        """The library versions the run trained with; empty for a run that saved none."""
        if not (self.path / ENVIRONMENT).is_file():
            return {}
        return {str(k): str(v) for k, v in self.read_json(ENVIRONMENT).items()}

    def write_history(self, records: list[dict[str, Any]]) -> None:
        self.write_json(HISTORY, {"epochs": records})

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        self.write_json(METRICS, metrics)

    def read_metrics(self) -> dict[str, Any]:
        return self.read_json(METRICS)

    def write_backbone(self, info: BackboneInfo) -> None:
        self.write_json(BACKBONE, asdict(info))

    def read_backbone(self) -> dict[str, Any]:
        return self.read_json(BACKBONE)

    # --- labels and images
    def write_labels(self, names: list[str]) -> None:
        (self.path / LABELS).write_text("".join(f"{name}\n" for name in names))

    def read_labels(self) -> list[str]:
        return artifacts.read_labels(self.path / LABELS)

    def write_samples(self, x: np.ndarray, y: np.ndarray) -> None:
        np.savez_compressed(self.path / SAMPLES, x=x, y=y)

    def write_calibration(self, x: np.ndarray) -> None:
        np.savez_compressed(self.path / CALIBRATION, x=x)

    def read_calibration(self) -> np.ndarray:
        with np.load(self.path / CALIBRATION) as data:
            return np.asarray(data["x"])


@dataclass(frozen=True)
class FinishedRun:
    """The parts of a finished run folder an export reads, checked for consistency."""

    path: Path
    labels: list[str]
    contract: InputContract
    config: dict[str, Any]
    dataset: dict[str, Any]
    backbone: dict[str, Any]
    metrics: dict[str, Any]
    #: ``environment.json``: the versions of the libraries that trained the model.
    environment: dict[str, str] = field(default_factory=dict)


def read_finished(run_dir: Path) -> FinishedRun:
    """Read and cross-check a finished run folder.

    Raises:
        RunFolderError: naming the file that is missing or inconsistent.
    """
    run_dir = Path(run_dir)
    if run_dir.name.endswith(".partial"):
        raise RunFolderError(f"{run_dir}: run is unfinished (.partial); training did not complete")
    if not run_dir.is_dir():
        raise RunFolderError(f"{run_dir}: run folder not found")
    run = RunFolder(run_dir)
    missing = run.missing(EXPORT_NEEDS)
    if missing:
        raise RunFolderError(f"{run_dir / missing[0]}: missing from the run folder")
    labels = run.read_labels()
    dataset = run.read_json(DATASET)
    info = DatasetInfo.from_json(dataset, run_dir / DATASET)
    if "class_names" in dataset and info.class_names != labels:
        raise RunFolderError(f"{run_dir / LABELS}: differs from dataset.json class_names")
    return FinishedRun(
        path=run_dir,
        labels=labels,
        contract=info.contract,
        config=run.read_config(),
        dataset=dataset,
        backbone=run.read_backbone(),
        metrics=run.read_metrics(),
        environment=run.read_environment(),
    )


def data_defaults(folder: Path) -> dict[str, Any]:
    """``image_size``, ``color_mode`` and ``crop_hands`` a model in ``folder`` was trained with.

    ``folder`` is a run folder (``dataset.json``) or a version folder (``report/dataset.json``);
    folder datasets have no native size, so evaluation defaults to the model's.
    """
    for path in (folder / DATASET, folder / artifacts.REPORT_DIR / DATASET):
        if path.is_file():
            info = DatasetInfo.from_json(RunFolder(path.parent).read_json(DATASET), path)
            return {
                "image_size": info.input_shape[0],
                "color_mode": info.color_mode,
                "crop_hands": info.crop == "hand",
            }
    return {}
