"""Find the hand in a photo and crop a square around it: the one crop rule, shared everywhere.

A sign-language model trained on hand crops (Sign Language MNIST) reads a real photo (a hand, a
forearm and a room) at chance; it must at least see the photo cropped as it was trained (on the
shared photos: 6.5% top-1 whole, 18.1% cropped; docs/training.md). Training's folder loader
(``--crop-hands``), the service (a version whose contract says ``crop: "hand"``) and the
benchmarks all crop through :func:`crop_hand`, so the crop cannot drift between them.

The detector is MediaPipe's own pair of models, run with LiteRT (``ai-edge-litert``, already a
dependency) and MediaPipe's documented post-processing, so nothing else joins ``.venv``:

1. palm detection (``palm_detection_full.tflite``): the whole image letterboxed to 192×192,
   2016 SSD anchors, sigmoid scores over 0.5, weighted non-maximum suppression at IoU 0.3
   (``mediapipe/modules/palm_detection/palm_detection_cpu.pbtxt``);
2. the hand region of each palm: the palm box rotated so the wrist-to-middle-finger line points
   up, scaled 2.6×, shifted half a box towards the fingers, squared
   (``mediapipe/modules/hand_landmark/palm_detection_detection_to_roi.pbtxt``);
3. hand landmarks (``hand_landmark_full.tflite``, the model MediaPipe's HandLandmarker uses on
   phones and ``@mediapipe/hands`` in browsers) on that region at 224×224: 21 points with depth,
   a hand-presence score, a handedness score and 21 world landmarks in metres
   (``hand_landmark_cpu.pbtxt``). When the palm detector finds nothing, the landmark model looks
   once at the whole image: the palm detector misses hands that fill the frame.

Each :class:`Hand` carries everything the landmark model reports, converted as MediaPipe's
HandLandmarker converts it (``hand_landmarks_detector_graph.cc``: ``TensorsToLandmarks`` with
``normalize_z`` 0.4, ``LandmarkProjection``, ``WorldLandmarkProjection``, handedness as a binary
classification whose score is the "Right" probability): the image landmarks as fractions of the
image's width and height (z scaled like x), the world landmarks rotated with the hand's region,
and the raw handedness score. A phone's HandLandmarker and this module therefore report the same
numbers for the same hand, and :mod:`handserve.hand_features` builds a model's input from either.

The files come from the ``mediapipe`` 0.10.21 wheel on PyPI (Apache-2.0), taken out of it at
install time by ``scripts/fetch-hand-models.sh`` into ``.cache/hand_models/`` and checked
against :data:`MODEL_SHA256` here; no file is downloaded at run time and none is committed. The
wheel itself cannot be installed beside TensorFlow (it pins protobuf < 5). ``HANDSERVE_HAND_MODELS``
may name another folder, or MediaPipe's official ``hand_landmarker.task`` bundle (a zip of the
same two models) for users who are online.

The crop rule (docs/training.md, "Hand crops"):

- the hand is the 21 landmarks of the largest hand found (by landmark box area; a second,
  smaller hand is ignored);
- the crop is the square centred on the landmarks' bounding box, of side
  ``(1 + 2 * HAND_MARGIN)`` × its longer side, moved inside the image where it overhangs, and
  no larger than the image's shorter side;
- an image already a hand crop stays whole: when that square would cover at least
  :data:`WHOLE_FRACTION` of the image's longer side, or when the image is smaller than
  :data:`MIN_DETECT_SIDE` on its shorter side (a 28×28 Sign MNIST image; the detector needs
  more pixels than that);
- no hand found: :class:`NoHandError`; the caller keeps the image whole, skips it, or refuses it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import math
import os
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

#: The folder the install step fills (``scripts/fetch-hand-models.sh``), under the checkout.
DEFAULT_MODELS_DIR = Path(__file__).resolve().parents[1] / ".cache" / "hand_models"
#: Environment variable naming another folder, or a ``hand_landmarker.task`` bundle.
MODELS_ENV = "HANDSERVE_HAND_MODELS"
PALM_MODEL = "palm_detection_full.tflite"
#: One landmark model everywhere (training, serving, phone, browser): the full one. On the shared
#: photos it found as many hands as the lite one for about twice its time (docs/training.md).
LANDMARK_MODEL = "hand_landmark_full.tflite"
#: sha256 of the files in the ``mediapipe`` 0.10.21 wheels (every platform's wheel holds the
#: same files); a file in the folder that differs is refused.
MODEL_SHA256 = {
    PALM_MODEL: "1b14e9422c6ad006cde6581a46c8b90dd573c07ab7f3934b5589e7cea3f89a54",
    LANDMARK_MODEL: "11c272b891e1a99ab034208e23937a8008388cf11ed2a9d776ed3d01d0ba00e3",
}
#: Names of the two models inside MediaPipe's ``hand_landmarker.task`` bundle.
TASK_MEMBERS = {
    PALM_MODEL: "hand_detector.tflite",
    LANDMARK_MODEL: "hand_landmarks_detector.tflite",
}

#: Margin around the landmarks' box on each side, as a fraction of its longer side: landmarks
#: sit on the joints and fingertips' centres, so without one a fingertip or the wrist is cut;
#: Sign MNIST's crops are tight, and a Sign MNIST model read the shared photos best with a
#: small margin (top-1 20.4% at 0.05, 18.1% at 0.1, 11.6% at 0.2, 9.3% at 0.3; docs/training.md);
#: 0.1 rather than the best figure, which 216 photos cannot tell from noise, keeps fingertips.
HAND_MARGIN = 0.1
#: A square covering at least this fraction of the longer side keeps the image whole: the image
#: is already a hand crop (Sign MNIST, a close-up), and cropping it would only cut its edges.
#: Not higher: in a close-up the detector may see only part of the hand (a fist's knuckles),
#: and a crop of a crop must stay whole.
WHOLE_FRACTION = 0.6
#: Images smaller than this on the shorter side are taken as hand crops without detection.
MIN_DETECT_SIDE = 64
#: A JPEG is decoded for detection at the smallest DCT scale keeping it this big (both sides):
#: enough for the 192-pixel palm detector and a 224-pixel landmark region of a small hand.
DETECT_SIZE = (640, 640)

# MediaPipe's palm-detection options (palm_detection_cpu.pbtxt).
_PALM_SIZE = 192
_LANDMARK_SIZE = 224
_MIN_SCORE = 0.5
_NMS_IOU = 0.3
_ROI_SCALE = 2.6
_ROI_SHIFT_Y = -0.5
_MIN_PRESENCE = 0.5
# MediaPipe's extra z scale of image landmarks (hand_landmarks_detector_graph.cc).
_NORMALIZE_Z = 0.4


class NoHandError(ValueError):
    """No hand was found in an image that needs one cropped.

    ``code`` is ``no_hand``: :func:`handserve.images.decode_image` turns this into its
    ``ImageDecodeError`` with that code, so every caller of the shared decoder handles it as an
    unusable image (the service: a 422 counted under its own reason).
    """

    code = "no_hand"


class HandModelsMissing(RuntimeError):
    """The detector's model files are not installed (or not the expected ones)."""


@dataclass(frozen=True, eq=False)  # eq=False: comparing ndarrays field-wise is ambiguous
class Hand:
    """One detected hand: everything the landmark model reports, in MediaPipe's conventions.

    Attributes:
        box: the landmarks' bounding box ``(left, top, right, bottom)`` in pixels.
        landmarks: 21 × 2 array of (x, y) in pixels, MediaPipe's hand landmark order.
        image_landmarks: 21 × 3, as MediaPipe's HandLandmarker reports ``hand_landmarks``: x and
            y as fractions of the image's width and height, z relative depth (wrist-relative,
            scaled like x; smaller is nearer the camera). None for a hand made by hand in tests.
        world_landmarks: 21 × 3 in metres around the hand's centre, rotated with the image
            (``hand_world_landmarks``).
        handedness: the model's handedness score, the probability MediaPipe's HandLandmarker
            calls "Right" (its labels assume a mirrored, selfie image).
        presence: the hand-presence score (over 0.5 for every hand returned).
        image_size: ``(width, height)`` of the image the landmarks were found in.
    """

    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    image_landmarks: np.ndarray | None = None
    world_landmarks: np.ndarray | None = None
    handedness: float | None = None
    presence: float | None = None
    image_size: tuple[int, int] | None = None

    @property
    def area(self) -> float:
        left, top, right, bottom = self.box
        return (right - left) * (bottom - top)


@dataclass(frozen=True)
class HandCrop:
    """The outcome of the crop rule: the square kept and why.

    Attributes:
        box: ``(left, top, right, bottom)`` in the image's pixels (the whole image if ``whole``).
        whole: the image was already a hand crop and stays whole.
        hands: how many hands were found (0 when detection was not needed).
    """

    box: tuple[int, int, int, int]
    whole: bool
    hands: int


def models_source() -> Path:
    """Where the models are read from: ``$HANDSERVE_HAND_MODELS`` or the install folder."""
    return Path(os.environ.get(MODELS_ENV) or DEFAULT_MODELS_DIR)


def models_available(source: Path | None = None) -> bool:
    """Whether the two model files are there (the fetch step ran); checksums are checked on load."""
    source = models_source() if source is None else Path(source)
    if source.is_file():
        return zipfile.is_zipfile(source)
    return all((source / name).is_file() for name in MODEL_SHA256)


#: Where each model file sits inside the mediapipe wheel.
WHEEL_MEMBERS = {
    PALM_MODEL: "mediapipe/modules/palm_detection/palm_detection_full.tflite",
    LANDMARK_MODEL: "mediapipe/modules/hand_landmark/hand_landmark_full.tflite",
}
WHEEL_LICENSE = "mediapipe-0.10.21.dist-info/LICENSE"


def check_models(source: Path | None = None) -> None:
    """Raise :class:`HandModelsMissing` (naming the fix) unless the models a
    :class:`HandDetector` would load are there and intact; builds no interpreter."""
    _read_models(models_source() if source is None else Path(source))


def models_ok(folder: Path | str) -> bool:
    """Whether ``folder`` holds both model files with the expected checksums (fetch skips)."""
    try:
        check_models(Path(folder))
    except HandModelsMissing:
        return False
    return Path(folder).is_dir()


def extract_from_wheel(wheel: Path | str, dest: Path | str) -> None:
    """Take the two model files (and MediaPipe's LICENSE) out of the mediapipe wheel into
    ``dest``, each checked against :data:`MODEL_SHA256` before it is written.

    Raises:
        HandModelsMissing: the wheel lacks a file, or a file is not the expected one.
    """
    dest = Path(dest)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        found = {}
        for ours, member in WHEEL_MEMBERS.items():
            if member not in names:
                raise HandModelsMissing(f"{wheel}: has no {member}")
            data = archive.read(member)
            if hashlib.sha256(data).hexdigest() != MODEL_SHA256[ours]:
                raise HandModelsMissing(f"{wheel}: {member} is not the expected file (sha256)")
            found[ours] = data
        licence = archive.read(WHEEL_LICENSE) if WHEEL_LICENSE in names else None
    dest.mkdir(parents=True, exist_ok=True)
    for name, data in found.items():
        (dest / name).write_bytes(data)
    if licence is not None:
        (dest / "LICENSE").write_bytes(licence)
    log.info("hand models written to %s", dest)


def _read_models(source: Path) -> dict[str, bytes]:
    if source.is_file():  # a hand_landmarker.task bundle, the user's choice: no checksum to hold
        with zipfile.ZipFile(source) as bundle:
            names = set(bundle.namelist())
            missing = [m for m in TASK_MEMBERS.values() if m not in names]
            if missing:
                raise HandModelsMissing(
                    f"{source}: not a MediaPipe hand_landmarker.task bundle (lacks {missing})"
                )
            return {ours: bundle.read(theirs) for ours, theirs in TASK_MEMBERS.items()}
    out = {}
    for name, digest in MODEL_SHA256.items():
        path = source / name
        if not path.is_file():
            raise HandModelsMissing(
                f"{path} is missing: run scripts/fetch-hand-models.sh (it takes MediaPipe's "
                f"hand models out of the mediapipe wheel on PyPI), or set {MODELS_ENV} to a "
                "folder holding them or to a hand_landmarker.task bundle"
            )
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise HandModelsMissing(
                f"{path}: sha256 differs from the mediapipe 0.10.21 file; fetch it again"
            )
        out[name] = data
    return out


@functools.cache
def _anchors() -> np.ndarray:
    """MediaPipe's SSD anchors for palm detection: centres (x, y), 2016 × 2.

    Layers with strides 8, 16, 16, 16 at 192 px; consecutive layers of one stride share a grid,
    each layer giving 2 anchors per cell (aspect ratio 1 and the interpolated scale), all of
    fixed size 1 (``fixed_anchor_size``), so only the centres matter.
    """
    centres = []
    strides = [8, 16, 16, 16]
    layer = 0
    while layer < len(strides):
        stride = strides[layer]
        same = 0
        while layer < len(strides) and strides[layer] == stride:
            same += 2
            layer += 1
        cells = math.ceil(_PALM_SIZE / stride)
        for y in range(cells):
            for x in range(cells):
                for _ in range(same):
                    centres.append(((x + 0.5) / cells, (y + 0.5) / cells))
    return np.asarray(centres, dtype=np.float32)


def _weighted_nms(boxes: np.ndarray, scores: np.ndarray, extra: np.ndarray) -> list[tuple]:
    """MediaPipe's WEIGHTED non-maximum suppression: each kept detection is the score-weighted
    mean of the boxes (and keypoints) overlapping it by IoU over :data:`_NMS_IOU`."""
    order = list(np.argsort(-scores))
    out = []
    while order:
        top = order[0]
        ious = _iou(boxes[top], boxes[order])
        group = [i for i, iou in zip(order, ious, strict=True) if iou > _NMS_IOU]
        weights = scores[group][:, None]
        box = (boxes[group] * weights).sum(0) / weights.sum()
        kps = (extra[group] * weights[:, :, None]).sum(0) / weights.sum()
        out.append((box, kps, float(scores[top])))
        order = [i for i in order if i not in group]
    return out


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    left = np.maximum(box[0], others[:, 0])
    top = np.maximum(box[1], others[:, 1])
    right = np.minimum(box[2], others[:, 2])
    bottom = np.minimum(box[3], others[:, 3])
    inter = np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


class HandDetector:
    """MediaPipe's palm detector and hand landmark model on LiteRT, one thread each.

    Not thread-safe per instance (a LiteRT interpreter is not); :func:`detector` keeps one per
    thread.
    """

    def __init__(self, source: Path | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        models = _read_models(models_source() if source is None else Path(source))
        self._palm = Interpreter(model_content=models[PALM_MODEL], num_threads=1)
        self._landmark = Interpreter(model_content=models[LANDMARK_MODEL], num_threads=1)
        for it in (self._palm, self._landmark):
            it.allocate_tensors()
        self._palm_in = self._palm.get_input_details()[0]["index"]
        outs = sorted(self._palm.get_output_details(), key=lambda d: int(d["shape"][-1]))
        self._palm_scores, self._palm_boxes = (d["index"] for d in outs)  # [..,1] then [..,18]
        self._lm_in = self._landmark.get_input_details()[0]["index"]
        # Outputs in the model's order: 21×3 landmarks, hand presence, handedness, world
        # landmarks (MediaPipe splits them by position, SplitTensorVectorCalculator); taken by
        # size in that order, so a renamed tensor changes nothing.
        outs = self._landmark.get_output_details()
        points = [d["index"] for d in outs if int(np.prod(d["shape"])) == 63]
        scalars = [d["index"] for d in outs if int(np.prod(d["shape"])) == 1]
        if len(points) != 2 or len(scalars) != 2:
            raise HandModelsMissing(
                f"{LANDMARK_MODEL}: expected outputs 21x3 landmarks, presence, handedness and "
                "21x3 world landmarks"
            )
        self._lm_points, self._lm_world = points
        self._lm_presence, self._lm_handedness = scalars

    def palms(self, img: Image.Image) -> list[tuple[np.ndarray, np.ndarray, float]]:
        """Palm boxes ``(x0, y0, x1, y1)`` and 7 keypoints in pixels, with scores."""
        width, height = img.size
        scale = _PALM_SIZE / max(width, height)
        new = (max(1, round(width * scale)), max(1, round(height * scale)))
        canvas = Image.new("RGB", (_PALM_SIZE, _PALM_SIZE))
        pad_x, pad_y = (_PALM_SIZE - new[0]) // 2, (_PALM_SIZE - new[1]) // 2
        canvas.paste(img.convert("RGB").resize(new, Image.Resampling.BILINEAR), (pad_x, pad_y))
        tensor = np.asarray(canvas, dtype=np.float32)[None] / 255.0
        self._palm.set_tensor(self._palm_in, tensor)
        self._palm.invoke()
        raw = self._palm.get_tensor(self._palm_boxes)[0]
        logits = self._palm.get_tensor(self._palm_scores)[0, :, 0]
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits, -100.0, 100.0)))
        keep = scores >= _MIN_SCORE
        if not keep.any():
            return []
        raw, scores = raw[keep], scores[keep]
        anchors = _anchors()[keep]
        centre = raw[:, 0:2] / _PALM_SIZE + anchors
        size = raw[:, 2:4] / _PALM_SIZE
        boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
        kps = raw[:, 4:18].reshape(-1, 7, 2) / _PALM_SIZE + anchors[:, None, :]
        # From the 192-px letterboxed square back to the image's pixels.
        offset = np.array([pad_x, pad_y], dtype=np.float32)
        return [
            (
                ((box.reshape(2, 2) * _PALM_SIZE - offset) / scale).reshape(4),
                (points * _PALM_SIZE - offset) / scale,
                score,
            )
            for box, points, score in _weighted_nms(boxes, scores, kps)
        ]

    def hands(self, img: Image.Image) -> list[Hand]:
        """Every hand whose landmark model confirms it, largest first.

        When the palm detector finds nothing, the landmark model looks at the whole image once:
        MediaPipe's palm detector misses hands that fill the frame (close-ups, crops), which are
        exactly the images the crop rule keeps whole. When that finds nothing either, the image
        is looked at again turned by a quarter, three quarters and half a turn (the first that
        finds a hand wins; its landmarks are turned back): the palm detector misses many hands
        pointing down or sideways (Q, G, H, P), and on the shared sign photos the turns found a
        hand in 94 of the 146 photos where none was found upright (docs/training.md).
        """
        rgb = img.convert("RGB")
        found = self._upright_hands(rgb)
        for turn in () if found else _TURNS:
            found = self._upright_hands(rgb.transpose(turn))
            if found:
                return [_turned_back(hand, turn, rgb.size) for hand in found]
        return found

    def _upright_hands(self, rgb: Image.Image) -> list[Hand]:
        found = []
        regions = [self._palm_region(box, points) for box, points, _ in self.palms(rgb)]
        if not regions:
            width, height = rgb.size
            regions = [(width / 2, height / 2, max(width, height), 0.0)]
        for region in regions:
            hand = self._landmarks(rgb, *region)
            if hand is not None:
                found.append(hand)
        return sorted(found, key=lambda h: -h.area)

    @staticmethod
    def _palm_region(box: np.ndarray, points: np.ndarray) -> tuple[float, float, float, float]:
        """MediaPipe's hand region of a palm: centre, side and rotation (radians)."""
        wrist, middle = points[0], points[2]
        angle = math.pi / 2 - math.atan2(-(middle[1] - wrist[1]), middle[0] - wrist[0])
        angle = angle - 2 * math.pi * math.floor((angle + math.pi) / (2 * math.pi))
        width, height = box[2] - box[0], box[3] - box[1]
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        # shift_y in the rotated frame (MediaPipe's RectTransformationCalculator)
        cx -= _ROI_SHIFT_Y * height * math.sin(angle)
        cy += _ROI_SHIFT_Y * height * math.cos(angle)
        return float(cx), float(cy), float(max(width, height) * _ROI_SCALE), angle

    def _landmarks(
        self, img: Image.Image, cx: float, cy: float, side: float, angle: float
    ) -> Hand | None:
        """The hand in a square region, or None if the model sees no hand there."""
        cos, sin = math.cos(angle), math.sin(angle)
        # Affine map from the 224-px region to the image: rotate by angle, scale side / 224.
        unit = side / _LANDMARK_SIZE
        a, b = cos * unit, -sin * unit
        d, e = sin * unit, cos * unit
        half = _LANDMARK_SIZE / 2
        c = cx - a * half - b * half
        f = cy - d * half - e * half
        region = img.transform(
            (_LANDMARK_SIZE, _LANDMARK_SIZE),
            Image.Transform.AFFINE,
            (a, b, c, d, e, f),
            resample=Image.Resampling.BILINEAR,
        )
        tensor = np.asarray(region, dtype=np.float32)[None] / 255.0
        self._landmark.set_tensor(self._lm_in, tensor)
        self._landmark.invoke()
        presence = float(self._landmark.get_tensor(self._lm_presence).reshape(-1)[0])
        if presence < _MIN_PRESENCE:
            return None
        local = self._landmark.get_tensor(self._lm_points).reshape(21, 3).astype(np.float64)
        xs = a * local[:, 0] + b * local[:, 1] + c
        ys = d * local[:, 0] + e * local[:, 1] + f
        pixels = np.stack([xs, ys], axis=1)
        width, height = img.size
        # LandmarkProjectionCalculator: z scaled as x, by the region's width over the image's.
        zs = local[:, 2] / _LANDMARK_SIZE / _NORMALIZE_Z * (side / width)
        image = np.stack([xs / width, ys / height, zs], axis=1).astype(np.float32)
        # WorldLandmarkProjectionCalculator: x, y rotated by the region's rotation; z kept.
        raw = self._landmark.get_tensor(self._lm_world).reshape(21, 3).astype(np.float64)
        world = np.stack(
            [cos * raw[:, 0] - sin * raw[:, 1], sin * raw[:, 0] + cos * raw[:, 1], raw[:, 2]],
            axis=1,
        ).astype(np.float32)
        handedness = float(self._landmark.get_tensor(self._lm_handedness).reshape(-1)[0])
        (left, top), (right, bottom) = pixels.min(0), pixels.max(0)
        return Hand(
            (float(left), float(top), float(right), float(bottom)),
            pixels.astype(np.float32),
            image_landmarks=image,
            world_landmarks=world,
            handedness=handedness,
            presence=presence,
            image_size=(width, height),
        )


#: The turns tried when an upright image shows no hand, in order (Pillow's transposes:
#: ROTATE_90 turns the image a quarter turn counter-clockwise).
_TURNS = (
    Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_270,
    Image.Transpose.ROTATE_180,
)


def _turned_back(hand: Hand, turn: Image.Transpose, size: tuple[int, int]) -> Hand:
    """A hand found in the image turned by ``turn``, in the upright image of ``size``.

    Pixels and image landmarks are mapped back, world landmarks turned back about the camera's
    axis, and the image landmarks' z rescaled to the upright image's width (MediaPipe scales z
    like x).
    """
    width, height = size
    px, py = hand.landmarks[:, 0].astype(np.float64), hand.landmarks[:, 1].astype(np.float64)
    if turn == Image.Transpose.ROTATE_90:  # upright (x, y) -> turned (y, W - x)
        xs, ys, rot = width - py, px, np.array([[0.0, -1.0], [1.0, 0.0]])
    elif turn == Image.Transpose.ROTATE_270:  # upright (x, y) -> turned (H - y, x)
        xs, ys, rot = py, height - px, np.array([[0.0, 1.0], [-1.0, 0.0]])
    else:  # ROTATE_180: upright (x, y) -> turned (W - x, H - y)
        xs, ys, rot = width - px, height - py, -np.eye(2)
    pixels = np.stack([xs, ys], axis=1)
    image = world = None
    if hand.image_landmarks is not None and hand.image_size is not None:
        z = hand.image_landmarks[:, 2] * hand.image_size[0] / width
        image = np.stack([xs / width, ys / height, z], axis=1).astype(np.float32)
    if hand.world_landmarks is not None:
        w = hand.world_landmarks.astype(np.float64)
        world = np.concatenate([w[:, :2] @ rot.T, w[:, 2:]], axis=1).astype(np.float32)
    (left, top), (right, bottom) = pixels.min(0), pixels.max(0)
    return dataclasses.replace(
        hand,
        box=(float(left), float(top), float(right), float(bottom)),
        landmarks=pixels.astype(np.float32),
        image_landmarks=image,
        world_landmarks=world,
        image_size=(width, height),
    )


_local = threading.local()


def detector() -> HandDetector:
    """This thread's :class:`HandDetector`, built on first use (the models load once per thread)."""
    found: HandDetector | None = getattr(_local, "detector", None)
    if found is None:
        found = HandDetector()
        _local.detector = found
    return found


def square_around(
    box: tuple[float, float, float, float], size: tuple[int, int]
) -> tuple[tuple[int, int, int, int], bool]:
    """The crop rule's square for a hand box in an image of ``size``, and whether it is whole.

    Args:
        box: the hand's ``(left, top, right, bottom)`` in pixels.
        size: the image's ``(width, height)``.

    Returns:
        ``(left, top, right, bottom)`` integer pixels, and True when the image stays whole.
    """
    width, height = size
    left, top, right, bottom = box
    side = max(right - left, bottom - top) * (1 + 2 * HAND_MARGIN)
    if side >= WHOLE_FRACTION * max(width, height):
        return (0, 0, width, height), True
    side = min(round(side), width, height)
    x0 = round((left + right) / 2 - side / 2)
    y0 = round((top + bottom) / 2 - side / 2)
    x0 = min(max(x0, 0), width - side)
    y0 = min(max(y0, 0), height - side)
    return (x0, y0, x0 + side, y0 + side), False


def find_crop(img: Image.Image, hand_detector: HandDetector | None = None) -> HandCrop:
    """Apply the crop rule to an upright image: where its hand crop is (module docstring).

    Raises:
        NoHandError: no hand in an image big enough to look for one.
        HandModelsMissing: the detector's files are not installed.
    """
    width, height = img.size
    if min(width, height) < MIN_DETECT_SIDE:
        return HandCrop((0, 0, width, height), True, 0)
    hands = (hand_detector or detector()).hands(img)
    if not hands:
        raise NoHandError(f"no hand found in the {width}x{height} image")
    largest = max(hands, key=lambda h: h.area)
    box, whole = square_around(largest.box, (width, height))
    return HandCrop(box, whole, len(hands))


def crop_hand(img: Image.Image, hand_detector: HandDetector | None = None) -> Image.Image:
    """The image cropped to its hand by the crop rule (the image itself when it stays whole).

    Raises:
        NoHandError: no hand found (see :func:`find_crop`).
    """
    found = find_crop(img, hand_detector)
    return img if found.whole else img.crop(found.box)


def find_hand(img: Image.Image, hand_detector: HandDetector | None = None) -> Hand:
    """The largest hand in an upright image, with everything the landmark model reports.

    The same choice as the crop rule (the largest hand by landmark box; a second, smaller hand
    is ignored), for models that read the hand's landmarks rather than its pixels.

    Raises:
        NoHandError: no hand found.
        HandModelsMissing: the detector's files are not installed.
    """
    found = (hand_detector or detector()).hands(img)
    if not found:
        width, height = img.size
        raise NoHandError(f"no hand found in the {width}x{height} image")
    return max(found, key=lambda h: h.area)
