"""Photos of hands as hand records: folders in, one MediaPipe hand per photo out, cached.

The input of the hand-feature backbones (``--backbone hand_landmarks`` / ``hand_embedder``,
:mod:`handserve.hand_features`). Each photo is decoded as the server decodes it
(:func:`handserve.images.open_image` at the detector's size), its largest hand found by
:func:`handserve.hands.find_hand`, and kept as one record row; photos without a hand are reported
and skipped (a hand model has nothing to read in them). Finding a hand costs tens of
milliseconds a photo, training on its record microseconds, so the records are cached in
``.cache/hand_records/`` under the checkout, one file per data folder, each row keyed by the
photo's path, size and modification time and the hand models' checksums: a second run (or the
next fold of a leave-one-group-out benchmark) detects nothing again.

A data folder is ``ROOT/<class>/`` (class folders; every photo's group is the folder's name, or
the file name's prefix before ``_`` when it has one, as ``asl_photos/A/davidlee_1.jpg``) or
``ROOT/<source>/<class>/`` (a folder of sources, as ``asl_signers/massey/A/``: the group is the
source, or the signer where the file name says it, ``hand3_...``). Several folders train
together (``--data-dir`` and ``--extra-data-dirs``); their classes are the union of theirs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from handserve import hand_features, hands
from handserve.images import IMAGE_EXTENSIONS, ImageDecodeError, open_image
from training.data import splits
from training.data.base import DataError, one_line

log = logging.getLogger(__name__)

#: Where records are cached, under the checkout (``.cache/`` is ignored by git).
CACHE_DIR = Path(__file__).resolve().parents[2] / ".cache" / "hand_records"
#: Sessions that must not be split between training and test, whatever folder they are in:
#: asl_photos' ``davidlee`` photos come from the same Roboflow set as asl_signers' ``roboflow``.
SAME_GROUP = {"davidlee": "roboflow"}
_SIGNER = re.compile(r"^(hand\d+)_")
_PREFIX = re.compile(r"^([A-Za-z]+)_\d+$")


@dataclass(frozen=True, eq=False)
class Records:
    """Hand records and labels of one split (``x``: ``(N, RECORD_SIZE)`` float32)."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True, eq=False)
class HandTable:
    """Every photo with a hand, across the data folders: records, labels, groups, paths."""

    class_names: list[str]
    x: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    paths: list[str]
    no_hand: list[str]
    sources: list[str]
    #: the group of each photo in ``no_hand``
    no_hand_groups: list[str] = dataclasses.field(default_factory=list)

    def take(self, idx: np.ndarray) -> Records:
        return Records(self.x[idx], self.y[idx])


@dataclass(frozen=True, eq=False)
class HandDataset:
    """A :class:`training.data.Dataset` of hand records (the same fields the report reads)."""

    name: str
    class_names: list[str]
    train: Records
    val: Records
    test: Records | None
    source: str
    test_origin: str = ""
    no_hand: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class _Photo:
    path: Path
    label: str
    group: str


def group_of(path: Path, source: str | None) -> str:
    """The group a photo belongs to: its signer or source (module docstring)."""
    stem = path.stem
    signer = _SIGNER.match(stem)
    if source is not None:
        return f"{source}/{signer.group(1)}" if signer else source
    prefix = _PREFIX.match(stem)
    name = prefix.group(1) if prefix else path.parent.parent.name
    return SAME_GROUP.get(name, name)


def _images(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not p.name.startswith(".")
    )


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_photos(root: Path) -> list[_Photo]:
    """Every photo of one data folder with its class and group."""
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist (check --data-dir)")
    children = _subdirs(root)
    if not children:
        raise DataError(f"{root} has no class folders")
    nested = all(not _images(c) and _subdirs(c) for c in children)
    photos: list[_Photo] = []
    for child in children:
        classes = _subdirs(child) if nested else [child]
        for class_dir in classes:
            source = child.name if nested else None
            group_source = SAME_GROUP.get(source, source) if source else None
            for path in _images(class_dir):
                photos.append(_Photo(path, class_dir.name, group_of(path, group_source)))
    if not photos:
        raise DataError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in its class folders")
    return photos


#: Bumped when the way hands are found changes (2: turned images tried when upright finds none),
#: so no record of the old way is reused.
RECORDS_VERSION = 2


def _models_key() -> str:
    """The hand models' checksums and :data:`RECORDS_VERSION`: records found otherwise are not
    reused."""
    text = "".join(sorted(hands.MODEL_SHA256.values())) + str(hands.models_source())
    return hashlib.sha256(f"{text}|{RECORDS_VERSION}".encode()).hexdigest()[:16]


def _file_key(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def _record_of(path: Path) -> np.ndarray | None:
    """The photo's hand record, or None when it has no hand (or does not decode)."""
    try:
        img = open_image(path.read_bytes(), size=hands.DETECT_SIZE)
        return hand_features.record(hands.find_hand(img))
    except hands.NoHandError:
        return None
    except ImageDecodeError as exc:
        log.warning("skipping unreadable image %s: %s", path, exc.message)
        return None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {one_line(exc)}") from exc


def records_for(root: Path, paths: list[Path], workers: int | None = None) -> np.ndarray:
    """Records of ``paths`` (NaN rows: no hand), from the cache where it has them."""
    cache = CACHE_DIR / f"{hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]}.npz"
    models = _models_key()
    keys = [_file_key(p) for p in paths]
    known: dict[str, np.ndarray] = {}
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as data:
                if str(data["models"]) == models:
                    known = dict(zip(data["keys"].tolist(), data["records"], strict=True))
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring unreadable hand cache %s: %s", cache, one_line(exc))
    todo = [i for i, k in enumerate(keys) if k not in known]
    if todo:
        hands.check_models()
        log.info("finding hands in %d photos of %s (%d cached)", len(todo), root, len(known))
        with ThreadPoolExecutor(max_workers=workers or min(2, os.cpu_count() or 1)) as pool:
            found = list(pool.map(lambda i: _record_of(paths[i]), todo))
        nan = np.full(hand_features.RECORD_SIZE, np.nan, dtype=np.float32)
        for i, rec in zip(todo, found, strict=True):
            known[keys[i]] = nan if rec is None else rec
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.stem}.{os.getpid()}.partial.npz")  # one per writer
        np.savez(
            tmp,
            models=np.asarray(models),
            keys=np.asarray(list(known)),
            records=np.stack(list(known.values())).astype(np.float32),
        )
        tmp.replace(cache)  # never a half-written cache
    return np.stack([known[k] for k in keys]).astype(np.float32)


def load_table(roots: Sequence[str | os.PathLike[str]]) -> HandTable:
    """Every photo of every folder in ``roots`` as a hand record; photos without one reported.

    Raises:
        DataError: a folder is missing or empty, or a class has no photo with a hand.
    """
    if not roots:
        raise DataError("hand features need --data-dir (and optionally --extra-data-dirs)")
    photos: list[_Photo] = []
    records: list[np.ndarray] = []
    for root in (Path(r) for r in roots):
        found = list_photos(root)
        photos.extend(found)
        records.append(records_for(root, [p.path for p in found]))
    x = np.concatenate(records)
    has_hand = ~np.isnan(x).any(axis=1)
    no_hand = [str(p.path) for p, ok in zip(photos, has_hand, strict=True) if not ok]
    if no_hand:
        log.warning(
            "no hand found in %d of %d photos, skipped: %s",
            len(no_hand),
            len(photos),
            ", ".join(no_hand[:20]) + (" ..." if len(no_hand) > 20 else ""),
        )
    class_names = sorted({p.label for p in photos})
    kept = [p for p, ok in zip(photos, has_hand, strict=True) if ok]
    y = np.asarray([class_names.index(p.label) for p in kept], dtype=np.int64)
    missing = [c for i, c in enumerate(class_names) if not (y == i).any()]
    if missing:
        raise DataError(f"no photo with a hand found for class(es) {', '.join(missing)}")
    return HandTable(
        class_names=class_names,
        x=x[has_hand],
        y=y,
        groups=np.asarray([p.group for p in kept]),
        paths=[str(p.path) for p in kept],
        no_hand=no_hand,
        sources=[str(r) for r in roots],
        no_hand_groups=[p.group for p, ok in zip(photos, has_hand, strict=True) if not ok],
    )


def load_hand_dataset(
    roots: Sequence[str | os.PathLike[str]],
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    limit: int | None = None,
) -> HandDataset:
    """The folders' hand records split into train, val and a held-out test (stratified, seeded,
    as :mod:`training.data.splits` splits every dataset)."""
    table = load_table(roots)
    idx = np.arange(len(table.y))
    test = None
    origin = ""
    if test_fraction > 0:
        keep, held = splits.hold_out(table.y, test_fraction, seed, splits.SALT_TEST)
        test = table.take(held)
        idx = keep
        origin = f"{test_fraction:.0%} of the photos, held out"
    idx = idx[splits.limit(table.y[idx], limit, seed)]
    keep, held = splits.hold_out(table.y[idx], val_fraction, seed, splits.SALT_VAL)
    name = "+".join(Path(r).resolve().name for r in roots)
    dataset = HandDataset(
        name=name,
        class_names=table.class_names,
        train=table.take(idx[keep]),
        val=table.take(idx[held]),
        test=test,
        source=", ".join(table.sources),
        test_origin=origin,
        no_hand=tuple(table.no_hand),
        groups=tuple(sorted(set(table.groups.tolist()))),
    )
    log.info(
        "%s: %d train, %d val, %s test hands in %d classes; %d photos without a hand skipped",
        name,
        len(dataset.train),
        len(dataset.val),
        len(test) if test is not None else "no",
        dataset.num_classes,
        len(table.no_hand),
    )
    return dataset
