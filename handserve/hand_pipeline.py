"""What a server runs before a hand-feature head: a photo, or a hand as a phone reports it, in;
the head's input out. The serving half of :mod:`handserve.hand_features`.

A version whose manifest ``input`` is :class:`handserve.artifacts.HandFeatures` takes one of two
requests, both ending in the same ``float32 [1, size]`` features:

- a **photo**: decoded as every upload is (:func:`handserve.images.open_image`, at the hand
  detector's size), its largest hand found by MediaPipe's models (:mod:`handserve.hands`), its
  record made in MediaPipe's HandLandmarker conventions; no hand is the ``no_hand``
  :class:`~handserve.images.ImageDecodeError` of today (a 422);
- **landmarks**, field for field as MediaPipe's HandLandmarker reports a hand on a phone or in a
  browser (tensor names of the Open Inference Protocol in brackets): ``image_landmarks``
  ``[1, 21, 3]`` (x, y as fractions of the image's width and height, z as MediaPipe gives it),
  ``world_landmarks`` ``[1, 21, 3]`` (metres), ``handedness`` ``[1, 1]`` (the score of the
  category "Right"; for "Left" with score s send 1 - s) and ``image_size`` ``[1, 2]`` (width,
  height in pixels). A few hundred bytes, and no picture of a person leaves the device.

The hand models a server runs must be the ones the features were trained with: their sha256 are
in the contract and :class:`HandPipeline` refuses others, unless the server was pointed at
MediaPipe's own ``hand_landmarker.task`` bundle (``HANDSERVE_HAND_MODELS``), the user's choice.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from handserve import hand_features, hands
from handserve.artifacts import ArtifactError, HandFeatures
from handserve.images import DEFAULT_MAX_PIXELS, ImageDecodeError, open_image

log = logging.getLogger(__name__)

#: The Open Inference Protocol's input tensors of a hand sent as landmarks: name -> shape.
LANDMARK_TENSORS = {
    "image_landmarks": (1, 21, 3),
    "world_landmarks": (1, 21, 3),
    "handedness": (1, 1),
    "image_size": (1, 2),
}


class HandPipeline:
    """Photo or landmarks to a hand-feature head's input, for one verified version.

    Thread-safe: the hand detector and the embedder are kept per thread.
    """

    def __init__(
        self, version_dir: Path | str, contract: HandFeatures, models: Path | None = None
    ) -> None:
        """Check the server's hand models against ``contract`` and load the version's embedder.

        Args:
            version_dir: the version folder (its files already verified: ``load_verified``).
            contract: the manifest's ``input``.
            models: the hand models' folder or ``.task`` bundle (default: as
                :func:`handserve.hands.models_source`).

        Raises:
            ArtifactError: the hand models differ from the contract's, or the embedder is
                missing.
            HandModelsMissing: no hand models installed.
        """
        self.contract = contract
        self.models = hands.models_source() if models is None else Path(models)
        hands.check_models(self.models)
        if self.models.is_dir() and contract.hand_models != hands.MODEL_SHA256:
            raise ArtifactError(
                Path(version_dir),
                f"its features come from hand models {contract.hand_models}; this server runs "
                f"{hands.MODEL_SHA256} ({self.models})",
            )
        if not self.models.is_dir():
            log.info("%s: hand models from %s, not checksummed", version_dir, self.models)
        self._embedder: bytes | None = None
        if contract.embedder is not None:
            path = Path(version_dir) / contract.embedder
            if not path.is_file():
                raise ArtifactError(path, "the version's gesture embedder is missing")
            self._embedder = path.read_bytes()
        self._local = threading.local()

    def _thread(self) -> Any:
        local = self._local
        if not hasattr(local, "detector"):
            local.detector = hands.HandDetector(self.models)
            local.embedder = (
                hand_features.GestureEmbedder(self._embedder) if self._embedder else None
            )
        return local

    def features(self, records: np.ndarray) -> np.ndarray:
        """The head's input for hand records ``(N, RECORD_SIZE)``: ``(N, size)`` float32."""
        return hand_features.features(records, self.contract.kind, self._thread().embedder)

    def record_of_photo(self, data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
        """The photo's largest hand as a record.

        Raises:
            ImageDecodeError: not a usable image, or code ``no_hand`` when it shows no hand.
        """
        img = open_image(data, max_pixels=max_pixels, size=hands.DETECT_SIZE)
        try:
            hand = hands.find_hand(img, self._thread().detector)
        except hands.NoHandError as exc:
            raise ImageDecodeError(exc.code, str(exc)) from exc
        return hand_features.record(hand)

    def from_photo(self, data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
        """``(1, size)`` features of the photo's hand (see :meth:`record_of_photo`)."""
        return self.features(self.record_of_photo(data, max_pixels)[None])

    def from_landmarks(self, tensors: dict[str, Any]) -> np.ndarray:
        """``(1, size)`` features of a hand sent as :data:`LANDMARK_TENSORS`.

        Raises:
            HandFeatureError: a tensor is missing, of another shape, or out of range (the
                message names it).
        """
        arrays = {}
        for name, shape in LANDMARK_TENSORS.items():
            if name not in tensors:
                raise hand_features.HandFeatureError(
                    f"missing input tensor {name!r}; a hand takes {sorted(LANDMARK_TENSORS)}"
                )
            value = np.asarray(tensors[name], dtype=np.float32)
            if value.size != int(np.prod(shape)):
                raise hand_features.HandFeatureError(
                    f"input tensor {name!r} must have shape {list(shape)}, got {list(value.shape)}"
                )
            arrays[name] = value.reshape(shape)
        width, height = (float(v) for v in arrays["image_size"][0])
        record = hand_features.pack(
            arrays["image_landmarks"][0],
            arrays["world_landmarks"][0],
            float(arrays["handedness"][0, 0]),
            width,
            height,
        )
        return self.features(record[None])


def landmark_tensors(hand: hands.Hand) -> dict[str, np.ndarray]:
    """A detected hand as the :data:`LANDMARK_TENSORS` a phone would send for it."""
    return record_tensors(hand_features.record(hand))


def record_tensors(record: np.ndarray) -> dict[str, np.ndarray]:
    """A hand record (:func:`handserve.hand_features.record`) as :data:`LANDMARK_TENSORS`."""
    image, world, handedness, size = hand_features.unpack(record)
    return {
        "image_landmarks": image,
        "world_landmarks": world,
        "handedness": handedness.reshape(1, 1),
        "image_size": size,
    }
