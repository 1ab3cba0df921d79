"""Folders of images: ``ROOT/<class>/`` or ``ROOT/{train,valid,test}/<class>/``.

Every image is decoded and resized by :mod:`handserve.images`, the code the service runs, so a
photo becomes the same model input in training and in serving.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from handserve.images import (
    IMAGE_EXTENSIONS,
    ImageDecodeError,
    ImageSpec,
    channels_for,
    decode_image,
)
from training.config import TrainConfig
from training.data import splits
from training.data.base import (
    DataError,
    Dataset,
    Split,
    check_two_classes,
    log_summary,
    one_line,
)

log = logging.getLogger(__name__)

#: Names accepted for a folder dataset's validation sub-folder, in order of preference.
VAL_DIR_NAMES = ("valid", "val", "validation")


def from_config(cfg: TrainConfig) -> Dataset:
    if cfg.data_dir is None:
        raise DataError("the folder dataset needs --data-dir ROOT with one folder per class")
    return load_folder(
        cfg.data_dir,
        cfg.image_size,
        cfg.color_mode,
        val_fraction=cfg.val_fraction,
        test_fraction=cfg.folder_test_fraction,
        seed=cfg.seed,
        limit=cfg.limit,
        crop=cfg.hand_crop,
        no_hand=cfg.no_hand,
    )


@dataclass(frozen=True)
class _Files:
    """Image paths with their class indices, split before any pixel is decoded."""

    paths: list[Path]
    y: np.ndarray

    def take(self, idx: np.ndarray) -> _Files:
        return _Files([self.paths[i] for i in idx], self.y[idx])


def load_folder(
    root: str | os.PathLike[str],
    image_size: int,
    color_mode: str,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.0,
    seed: int = 42,
    limit: int | None = None,
    crop: str | None = None,
    no_hand: str = "keep",
) -> Dataset:
    """Images in ``ROOT/<class>/``, or ``ROOT/{train,valid,test}/<class>/``.

    Without ``valid/`` (also ``val/``, ``validation/``), ``val_fraction`` of the training images
    is held out; without ``test/``, ``test_fraction`` is. Every image is decoded and resized by
    :mod:`handserve.images`, the code the service runs. Corrupt images are logged, skipped and
    counted in ``Dataset.skipped``; ``limit`` is applied before decoding, so quick runs on a big
    folder stay quick.

    Args:
        root: the dataset folder; its name becomes the dataset name.
        image_size: images are resized to ``image_size`` x ``image_size``.
        color_mode: ``"rgb"`` or ``"grayscale"``.
        crop: ``"hand"`` crops every image to its hand first (``--crop-hands``,
            :mod:`handserve.hands`), as a server of the model will.
        no_hand: with ``crop``, what becomes of an image without a hand found: ``"keep"`` it
            whole or ``"skip"`` it. Either way it is logged and listed in ``Dataset.no_hand``.
    """
    if no_hand not in ("keep", "skip"):
        raise DataError(f"no_hand must be 'keep' or 'skip', got {no_hand!r}")
    if color_mode not in ("rgb", "grayscale"):
        raise DataError(f"color_mode must be 'rgb' or 'grayscale', got {color_mode!r}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist (check --data-dir)")
    spec = ImageSpec(image_size, image_size, channels_for(color_mode), crop)
    if crop is not None:
        _check_hand_models()

    layout = _Layout.of(root)
    class_names = layout.class_names
    pool, test_files, test_origin = _test_files(layout, test_fraction, seed)
    pool = pool.take(splits.limit(pool.y, limit, seed))
    if layout.val is not None:
        val_files = _list_images(layout.val, class_names)
    else:
        keep, held = splits.hold_out(pool.y, val_fraction, seed, splits.SALT_VAL)
        pool, val_files = pool.take(keep), pool.take(held)

    handless: list[str] = []
    train, n_train = _decode_all(pool, spec, no_hand, handless)
    val, n_val = _decode_all(val_files, spec, no_hand, handless)
    test, n_test = (
        _decode_all(test_files, spec, no_hand, handless) if test_files is not None else (None, 0)
    )
    skipped = n_train + n_val + n_test
    corrupt = skipped - (len(handless) if no_hand == "skip" else 0)
    if corrupt:
        log.warning("skipped %d corrupt images in %s", corrupt, root)
    if handless:
        log.warning(
            "no hand found in %d of the images in %s (%s): %s",
            len(handless),
            root,
            "skipped" if no_hand == "skip" else "kept whole",
            ", ".join(handless),
        )
    dataset = Dataset(
        name=root.resolve().name,
        class_names=class_names,
        train=train,
        val=val,
        test=test,
        source=str(root),
        skipped=skipped,
        test_origin=test_origin,
        crop=crop,
        no_hand=tuple(handless),
    )
    check_two_classes(train.y, str(layout.train))
    log_summary(dataset, layout.description)
    return dataset


def _test_files(layout: _Layout, fraction: float, seed: int) -> tuple[_Files, _Files | None, str]:
    """The training pool, the test files (``test/``, else ``fraction`` of the pool held out)
    and where the test split comes from, for the report."""
    pool = _list_images(layout.train, layout.class_names)
    if layout.test is not None:
        return pool, _list_images(layout.test, layout.class_names), f"{layout.test.name}/ folder"
    if fraction <= 0:
        return pool, None, ""
    keep, held = splits.hold_out(pool.y, fraction, seed, splits.SALT_TEST)
    origin = f"{fraction:.0%} of {layout.train.name}/, held out"
    return pool.take(keep), pool.take(held), origin


def load_scoring_split(
    root: str | os.PathLike[str],
    image_size: int,
    color_mode: str,
    class_names: list[str] | None,
    crop: str | None = None,
) -> tuple[Split, str, list[str]]:
    """Every image of ``ROOT/test/`` if it exists, else of ``ROOT``'s class folders, to score.

    The folder may hold any subset of ``class_names`` (the model's labels, in order): labels are
    indices into them, and a class folder the model does not know is an error naming it. With
    ``class_names`` None the folder's own sorted class names are the labels.

    Returns:
        The split, the folder it came from, and the folder's class names.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist (check --data-dir)")
    folder = root / "test" if (root / "test").is_dir() else root
    if folder == root and (root / "train").is_dir():
        raise DataError(
            f"{root} has train/ but no test/: point --data-dir at a folder of class folders "
            "or one with test/"
        )
    found = _class_dirs(folder)
    names = class_names if class_names is not None else found
    unknown = [n for n in found if n not in names]
    if unknown:
        raise DataError(
            f"{folder}: class folder(s) {', '.join(unknown)} are not classes of the model "
            f"({', '.join(names)})"
        )
    files = _list_images(folder, found)
    files = _Files(files.paths, np.asarray([names.index(found[i]) for i in files.y], np.int64))
    spec = ImageSpec(image_size, image_size, channels_for(color_mode), crop)
    if crop is not None:
        _check_hand_models()
    handless: list[str] = []
    split, skipped = _decode_all(files, spec, "keep", handless)
    if skipped:
        log.warning("skipped %d corrupt images in %s", skipped, folder)
    if handless:
        log.warning("no hand found in %d images, kept whole: %s", len(handless), handless)
    return split, str(folder), found


@dataclass(frozen=True)
class _Layout:
    """Where a folder dataset's splits are, and its class names (those of the training split)."""

    train: Path
    val: Path | None
    test: Path | None
    class_names: list[str]
    description: str

    @classmethod
    def of(cls, root: Path) -> _Layout:
        train_dir = root / "train"
        if train_dir.is_dir():
            class_names = _class_dirs(train_dir)
            val_dir = next((root / n for n in VAL_DIR_NAMES if (root / n).is_dir()), None)
            test_dir = root / "test" if (root / "test").is_dir() else None
            for other in (val_dir, test_dir):
                if other is not None:
                    _same_classes(other, _class_dirs(other), train_dir, class_names)
            parts = [d.name if d else "-" for d in (train_dir, val_dir, test_dir)]
            layout = cls(train_dir, val_dir, test_dir, class_names, "/".join(parts))
        else:
            layout = cls(root, None, None, _class_dirs(root), "class folders")
        if len(layout.class_names) < 2:
            raise DataError(
                f"{layout.train} has {len(layout.class_names)} class folder(s) "
                f"{layout.class_names}: a classifier needs at least 2 classes"
            )
        return layout


def _class_dirs(folder: Path) -> list[str]:
    """Sorted class folder names; hidden folders (``.ipynb_checkpoints``, ...) are not classes."""
    try:
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        raise DataError(f"cannot list {folder}: {one_line(exc)}") from exc


def _same_classes(folder: Path, names: list[str], train_dir: Path, train_names: list[str]) -> None:
    if names != train_names:
        missing = sorted(set(train_names) - set(names))
        extra = sorted(set(names) - set(train_names))
        raise DataError(
            f"{folder} must have the same class folders as {train_dir}: "
            f"missing {missing or 'none'}, extra {extra or 'none'}"
        )


def _list_images(folder: Path, class_names: list[str]) -> _Files:
    """Every image file (by extension, any case) of each class folder, in a stable order."""
    paths: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(class_names):
        class_dir = folder / name
        try:
            found = sorted(
                p
                for p in class_dir.iterdir()
                if p.suffix.lower() in IMAGE_EXTENSIONS
                and not p.name.startswith(".")
                and p.is_file()
            )
        except OSError as exc:
            raise DataError(f"cannot list {class_dir}: {one_line(exc)}") from exc
        if not found:
            raise DataError(
                f"class folder {class_dir} has no images ({', '.join(IMAGE_EXTENSIONS)})"
            )
        paths.extend(found)
        labels.extend([index] * len(found))
    return _Files(paths, np.asarray(labels, dtype=np.int64))


def _check_hand_models() -> None:
    """Fail before decoding anything when the hand detector's files are not installed."""
    from handserve import hands

    if not hands.models_available():
        raise DataError(
            f"cropping hands needs MediaPipe's hand models in {hands.models_source()}: run "
            f"scripts/fetch-hand-models.sh (make hand-models), or set {hands.MODELS_ENV}"
        )


def _decode_all(
    files: _Files, spec: ImageSpec, no_hand: str = "keep", handless: list[str] | None = None
) -> tuple[Split, int]:
    """Decode in threads (Pillow releases the GIL while decoding); unusable files become None.

    With a hand crop, a file without a hand is appended to ``handless`` and decoded whole
    (``no_hand="keep"``) or becomes None (``"skip"``).
    """
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda p: _decode_file(p, spec, no_hand), files.paths))
    arrays = [a for a, _ in results]
    if handless is not None:
        handless.extend(
            str(p) for p, (_, found) in zip(files.paths, results, strict=True) if not found
        )
    ok = np.asarray([a is not None for a in arrays], dtype=bool)
    for index in np.unique(files.y):
        in_class = files.y == index
        if not ok[in_class].any():
            folder = files.paths[int(np.flatnonzero(in_class)[0])].parent
            raise DataError(
                f"class folder {folder} has no readable images (all corrupt, or no hand found)"
            )
    good = [a for a in arrays if a is not None]
    x = np.stack(good) if good else np.zeros((0, spec.height, spec.width, spec.channels), np.uint8)
    return Split(x, files.y[ok]), int((~ok).sum())


def _decode_file(path: Path, spec: ImageSpec, no_hand: str) -> tuple[np.ndarray | None, bool]:
    """The image as model input (None: unusable), and False when no hand was found in it."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {one_line(exc)}") from exc
    try:
        return decode_image(data, spec), True
    except ImageDecodeError as exc:
        if exc.code == "no_hand":
            if no_hand == "skip":
                return None, False
            return decode_image(data, dataclasses.replace(spec, crop=None)), False
        log.warning("skipping corrupt image %s: %s", path, exc.message)
        return None, True
