"""A hand as numbers a small classifier can read: the one feature code of training and serving.

Pixel models of fingerspelling learn the people and the rooms they were trained on; the 21
landmarks of MediaPipe's hand model do not see skin, light or background, so a head trained on
them carries from one signer to the next (docs/training.md, "Hand features"). This module turns
what the landmark model reports (:class:`handserve.hands.Hand`, or the same fields a phone's
MediaPipe HandLandmarker sends) into a model's input, in one of two kinds:

``landmarks``
    the image and world landmarks, each taken from the wrist, scaled by the palm (mean wrist to
    knuckle distance) and, for a hand the model calls left, mirrored, so that where the hand is,
    how big it is and which hand signs do not change the numbers: 126 floats.
``embedder``
    MediaPipe's pretrained gesture embedder (``gesture_embedder.tflite``, from the
    ``gesture_recognizer.task`` bundle; frozen) on the same hand, fed as MediaPipe's own graph
    feeds it (``hand_gesture_recognizer_graph.cc``: ``LandmarksToMatrixCalculator`` with
    ``object_normalization`` from the wrist, after ``NormalizeLandmarkAspectRatio`` for the image
    landmarks; ``HandednessToMatrixCalculator``'s right-hand score): 128 floats.

Every hand is stored first as a *record*: one row of :data:`RECORD_SIZE` floats holding the image
landmarks (21 × 3, x and y as fractions of the image's width and height, z as MediaPipe gives
it), the world landmarks (21 × 3, metres), the handedness score and the image's width and height.
Features are computed from records, so a folder's records are detected once and cached, and
training augments records (:func:`augment`) before turning them into features.

NumPy and LiteRT only (no TensorFlow), like :mod:`handserve.images`: a LiteRT-only server uses it.
"""

from __future__ import annotations

import hashlib
import io
import threading
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from handserve.hands import Hand

#: The feature kinds, by backbone name (``--backbone hand_landmarks`` / ``hand_embedder``).
KINDS = ("landmarks", "embedder")
#: Floats per hand record: image landmarks, world landmarks, handedness, image width and height.
RECORD_SIZE = 21 * 3 + 21 * 3 + 1 + 2
#: Floats per feature vector of each kind.
FEATURE_SIZE = {"landmarks": 126, "embedder": 128}
#: The embedder's file name inside a version folder and inside ``gesture_recognizer.task``.
EMBEDDER_FILE = "gesture_embedder.tflite"
#: Landmarks whose distance to the wrist (0) measures the palm: the four knuckles.
_KNUCKLES = (5, 9, 13, 17)
_WRIST = 0


class HandFeatureError(ValueError):
    """A hand record or an embedder file that cannot be used; the message says which."""


# ------------------------------------------------------------------------------------ records


def record(hand: Hand) -> np.ndarray:
    """One hand as a record row (:data:`RECORD_SIZE` float32).

    Raises:
        HandFeatureError: the hand lacks the landmark model's outputs (a test's stand-in).
    """
    if hand.image_landmarks is None or hand.world_landmarks is None or hand.image_size is None:
        raise HandFeatureError("the hand has no image/world landmarks (not from the model)")
    width, height = hand.image_size
    return pack(
        hand.image_landmarks, hand.world_landmarks, float(hand.handedness or 0.0), width, height
    )


def pack(
    image_landmarks: Any, world_landmarks: Any, handedness: float, width: float, height: float
) -> np.ndarray:
    """A record from MediaPipe's HandLandmarker fields, as a phone or a browser reports them.

    Args:
        image_landmarks: 21 × 3: x, y as fractions of the image's width and height, z as given.
        world_landmarks: 21 × 3 in metres.
        handedness: the score MediaPipe calls "Right" (its category "Left" with score s is
            ``1 - s`` here).
        width, height: the image's size in pixels (the image landmarks' aspect ratio).
    """
    image = np.asarray(image_landmarks, dtype=np.float32)
    world = np.asarray(world_landmarks, dtype=np.float32)
    for name, arr in (("image landmarks", image), ("world landmarks", world)):
        if arr.shape != (21, 3):
            raise HandFeatureError(f"{name} must be 21 x 3, got {arr.shape}")
        if not np.isfinite(arr).all():
            raise HandFeatureError(f"{name} hold a non-finite value")
    if not 0.0 <= handedness <= 1.0:
        raise HandFeatureError(f"handedness must be a score in 0..1, got {handedness}")
    if not (width > 0 and height > 0):
        raise HandFeatureError(f"image size must be positive, got {width}x{height}")
    extra = np.asarray([handedness, width, height], dtype=np.float32)
    return np.concatenate([image.reshape(-1), world.reshape(-1), extra])


def unpack(records: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(image (N,21,3), world (N,21,3), handedness (N,), size (N,2))`` of record rows."""
    rows = np.asarray(records, dtype=np.float32).reshape(-1, RECORD_SIZE)
    image = rows[:, :63].reshape(-1, 21, 3)
    world = rows[:, 63:126].reshape(-1, 21, 3)
    return image, world, rows[:, 126], rows[:, 127:129]


def _image_in_pixel_units(image: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Image landmarks scaled so x, y and z share one unit (the image's longer side)."""
    width, height = size[:, 0:1], size[:, 1:2]
    longer = np.maximum(width, height)
    scale = np.stack([width / longer, height / longer, width / longer], axis=-1)
    return image * scale


def _from_pixel_units(points: np.ndarray, size: np.ndarray) -> np.ndarray:
    width, height = size[:, 0:1], size[:, 1:2]
    longer = np.maximum(width, height)
    scale = np.stack([width / longer, height / longer, width / longer], axis=-1)
    return points / scale


# ------------------------------------------------------------------------------- landmarks


def _canonical(points: np.ndarray, left: np.ndarray) -> np.ndarray:
    """From the wrist, scaled by the palm, left hands mirrored: ``(N, 21, 3)``."""
    rel = points - points[:, _WRIST : _WRIST + 1]
    palm = np.linalg.norm(rel[:, list(_KNUCKLES)], axis=-1).mean(axis=1)
    rel = rel / np.maximum(palm, 1e-6)[:, None, None]
    rel[left, :, 0] *= -1.0
    return rel


def landmark_features(records: np.ndarray) -> np.ndarray:
    """The ``landmarks`` kind: ``(N, 126)`` float32 (module docstring)."""
    image, world, handedness, size = unpack(records)
    left = handedness < 0.5
    flat = _image_in_pixel_units(image, size)
    out = np.concatenate(
        [_canonical(flat, left).reshape(-1, 63), _canonical(world, left).reshape(-1, 63)], axis=1
    )
    return out.astype(np.float32)


# -------------------------------------------------------------------------------- embedder


def _object_normalized(points: np.ndarray) -> np.ndarray:
    """MediaPipe's ``NormalizeObject`` (origin the wrist, scale the larger of the x and y
    extents plus 1e-5, applied to x, y and z)."""
    rel = points - points[:, _WRIST : _WRIST + 1]
    extent = np.maximum(np.ptp(rel[:, :, 0], axis=1), np.ptp(rel[:, :, 1], axis=1)) + 1e-5
    return rel / extent[:, None, None]


def embedder_inputs(records: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The gesture embedder's ``hand`` (N,21,3), ``handedness`` (N,1), ``world_hand`` (N,21,3).

    As ``hand_gesture_recognizer_graph.cc`` feeds it: the image landmarks through
    ``NormalizeLandmarkAspectRatio`` (x, y centred on the image and scaled by its side over the
    longer side; z unchanged), no rotation (the whole image's rectangle), then
    ``NormalizeObject``; the world landmarks through ``NormalizeObject`` alone; handedness the
    right-hand score. The matrix (3 × 21, column-major) reaches the model as 21 rows of (x, y, z).
    """
    image, world, handedness, size = unpack(records)
    width, height = size[:, 0:1], size[:, 1:2]
    longer = np.maximum(width, height)
    aspect = image.copy()
    aspect[:, :, 0] = (image[:, :, 0] - 0.5) * (width / longer) + 0.5
    aspect[:, :, 1] = (image[:, :, 1] - 0.5) * (height / longer) + 0.5
    return (
        _object_normalized(aspect).astype(np.float32),
        handedness.reshape(-1, 1).astype(np.float32),
        _object_normalized(world).astype(np.float32),
    )


def read_embedder(source: Path | str) -> bytes:
    """The embedder's bytes from a ``.tflite`` file or MediaPipe's ``gesture_recognizer.task``.

    The bundle is a zip holding ``hand_gesture_recognizer.task``, itself a zip holding
    :data:`EMBEDDER_FILE`; both levels are searched.

    Raises:
        HandFeatureError: the file is missing or holds no embedder.
    """
    path = Path(source)
    if not path.is_file():
        raise HandFeatureError(
            f"{path}: gesture embedder not found (--hand-embedder: a {EMBEDDER_FILE} or "
            "MediaPipe's gesture_recognizer.task)"
        )
    data = path.read_bytes()
    try:
        found = _from_zip(data, depth=2) if zipfile.is_zipfile(io.BytesIO(data)) else data
    except zipfile.BadZipFile as exc:
        raise HandFeatureError(f"{path}: a corrupt bundle ({exc})") from exc
    if found is None:
        raise HandFeatureError(f"{path}: holds no {EMBEDDER_FILE}")
    return found


def _from_zip(data: bytes, depth: int) -> bytes | None:
    if not zipfile.is_zipfile(io.BytesIO(data)):
        return None
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for name in archive.namelist():
            if Path(name).name == EMBEDDER_FILE:
                return archive.read(name)
        if depth > 1:
            for name in archive.namelist():
                if name.endswith(".task"):
                    inner = _from_zip(archive.read(name), depth - 1)
                    if inner is not None:
                        return inner
    return None


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class GestureEmbedder:
    """MediaPipe's gesture embedder on LiteRT: records in, ``(N, 128)`` embeddings out.

    Not thread-safe (a LiteRT interpreter is not); a server keeps one per thread.
    """

    def __init__(self, model: bytes, num_threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(model_content=model, num_threads=num_threads)
        self._interpreter.allocate_tensors()
        inputs = {d["name"]: d for d in self._interpreter.get_input_details()}
        try:
            self._hand = inputs["hand"]["index"]
            self._handedness = inputs["handedness"]["index"]
            self._world = inputs["world_hand"]["index"]
        except KeyError as exc:
            raise HandFeatureError(
                f"not MediaPipe's gesture embedder: inputs {sorted(inputs)}, expected hand, "
                "handedness, world_hand"
            ) from exc
        self._out = self._interpreter.get_output_details()[0]["index"]
        self._lock = threading.Lock()

    def __call__(self, records: np.ndarray) -> np.ndarray:
        hand, handedness, world = embedder_inputs(records)
        out = np.zeros((len(hand), FEATURE_SIZE["embedder"]), dtype=np.float32)
        with self._lock:
            for i in range(len(hand)):  # the model's inputs have batch 1
                self._interpreter.set_tensor(self._hand, hand[i : i + 1])
                self._interpreter.set_tensor(self._handedness, handedness[i : i + 1])
                self._interpreter.set_tensor(self._world, world[i : i + 1])
                self._interpreter.invoke()
                out[i] = self._interpreter.get_tensor(self._out)[0]
        return out


def features(records: np.ndarray, kind: str, embedder: GestureEmbedder | None = None) -> np.ndarray:
    """The model input of ``kind`` for record rows: ``(N, FEATURE_SIZE[kind])`` float32.

    Raises:
        HandFeatureError: an unknown kind, or ``embedder`` kind without an embedder.
    """
    if kind == "landmarks":
        return landmark_features(records)
    if kind == "embedder":
        if embedder is None:
            raise HandFeatureError("the embedder kind needs the gesture embedder")
        return embedder(records)
    raise HandFeatureError(f"unknown hand feature kind {kind!r}; known: {', '.join(KINDS)}")


# ------------------------------------------------------------------------------ augmentation


def _rotation(ax: np.ndarray, ay: np.ndarray, az: np.ndarray) -> np.ndarray:
    """``(N, 3, 3)`` rotations about x, then y, then z (radians, one angle of each per row)."""
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    one, zero = np.ones_like(ax), np.zeros_like(ax)
    rx = np.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], -1).reshape(-1, 3, 3)
    ry = np.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).reshape(-1, 3, 3)
    rz = np.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], -1).reshape(-1, 3, 3)
    return rz @ ry @ rx


def augment(
    records: np.ndarray,
    rng: np.random.Generator,
    *,
    mirror: float = 0.5,
    rotate_deg: float = 15.0,
    tilt_deg: float = 10.0,
    scale: float = 0.15,
    jitter: float = 0.01,
) -> np.ndarray:
    """Randomly changed copies of hand records, as another photo of the same sign might give.

    Each record is, independently: mirrored with probability ``mirror`` (the other hand making
    the sign: image x → 1 - x, world x → -x, handedness → 1 - handedness); turned in the image
    plane by up to ``rotate_deg`` and out of it (about x and y) by up to ``tilt_deg``, about the
    wrist, image and world landmarks alike; scaled about the wrist by up to ``scale``; and each
    image landmark moved by Gaussian noise of ``jitter`` × the palm size (world: the same share
    of the world palm).

    Args:
        records: ``(N, RECORD_SIZE)`` rows.
        rng: the seeded generator (the run's seed makes the copies reproducible).

    Returns:
        ``(N, RECORD_SIZE)`` float32 rows.
    """
    image, world, handedness, size = unpack(records)
    n = len(image)
    image, world, handedness = image.copy(), world.copy(), handedness.copy()
    flip = rng.random(n) < mirror
    image[flip, :, 0] = 1.0 - image[flip, :, 0]
    world[flip, :, 0] *= -1.0
    handedness[flip] = 1.0 - handedness[flip]

    rot = _rotation(
        np.radians(rng.uniform(-tilt_deg, tilt_deg, n)),
        np.radians(rng.uniform(-tilt_deg, tilt_deg, n)),
        np.radians(rng.uniform(-rotate_deg, rotate_deg, n)),
    )
    factor = rng.uniform(1.0 - scale, 1.0 + scale, n)[:, None, None]

    pts = _image_in_pixel_units(image, size)
    wrist = pts[:, _WRIST : _WRIST + 1]
    rel = (pts - wrist) @ np.transpose(rot, (0, 2, 1)) * factor
    palm = np.linalg.norm(rel[:, list(_KNUCKLES)], axis=-1).mean(axis=1)[:, None, None]
    rel = rel + rng.normal(0.0, 1.0, rel.shape) * jitter * palm
    image = _from_pixel_units(rel + wrist, size)

    wrist_w = world[:, _WRIST : _WRIST + 1]
    rel_w = (world - wrist_w) @ np.transpose(rot, (0, 2, 1))
    palm_w = np.linalg.norm(rel_w[:, list(_KNUCKLES)], axis=-1).mean(axis=1)[:, None, None]
    rel_w = rel_w + rng.normal(0.0, 1.0, rel_w.shape) * jitter * palm_w
    world = rel_w + wrist_w

    rows = np.concatenate(
        [image.reshape(n, -1), world.reshape(n, -1), handedness[:, None], size], axis=1
    )
    return rows.astype(np.float32)
