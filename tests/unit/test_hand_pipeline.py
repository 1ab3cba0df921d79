"""The serving half of hand features (handserve.hand_pipeline): a photo and the same hand sent as
MediaPipe landmarks give the head the same numbers; bad landmarks and foreign hand models are
refused by name. Needs MediaPipe's hand models (skipped without); real photos need ../shared."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from handserve import hand_features, hands
from handserve.artifacts import ArtifactError, HandFeatures
from handserve.hand_pipeline import HandPipeline, landmark_tensors, record_tensors
from handserve.images import ImageDecodeError

from .test_hand_features import a_hand

pytestmark = pytest.mark.skipif(
    not hands.models_available(),
    reason="MediaPipe's hand models are not fetched (scripts/fetch-hand-models.sh)",
)


def contract(kind: str = "landmarks", **changes: object) -> HandFeatures:
    fields: dict = {
        "kind": kind,
        "size": hand_features.FEATURE_SIZE[kind],
        "hand_models": dict(hands.MODEL_SHA256),
        "embedder": hand_features.EMBEDDER_FILE if kind == "embedder" else None,
    }
    return HandFeatures(**{**fields, **changes})


def test_landmarks_sent_by_a_phone_become_the_heads_input(tmp_path: Path) -> None:
    pipeline = HandPipeline(tmp_path, contract())
    rec = a_hand(width=720, height=1280, handedness=0.3)
    got = pipeline.from_landmarks(record_tensors(rec))
    np.testing.assert_array_equal(got, hand_features.landmark_features(rec[None]))
    assert got.shape == (1, 126) and got.dtype == np.float32


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"handedness": None}, "missing input tensor 'handedness'"),
        ({"image_landmarks": np.zeros((1, 20, 3))}, "'image_landmarks' must have shape"),
        ({"handedness": np.full((1, 1), 2.0)}, "handedness must be a score"),
        ({"image_size": np.zeros((1, 2))}, "image size must be positive"),
    ],
)
def test_bad_landmarks_are_refused_by_name(tmp_path: Path, change: dict, says: str) -> None:
    tensors = {k: v for k, v in {**record_tensors(a_hand()), **change}.items() if v is not None}
    with pytest.raises(hand_features.HandFeatureError, match=says):
        HandPipeline(tmp_path, contract()).from_landmarks(tensors)


def test_a_version_from_other_hand_models_is_refused(tmp_path: Path) -> None:
    other = {name: "0" * 64 for name in hands.MODEL_SHA256}
    with pytest.raises(ArtifactError, match="its features come from hand models"):
        HandPipeline(tmp_path, contract(hand_models=other))
    with pytest.raises(ArtifactError, match="gesture embedder is missing"):
        HandPipeline(tmp_path, contract("embedder"))


def test_a_photo_without_a_hand_is_the_no_hand_refusal(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (320, 240), (200, 180, 160)).save(buf, format="PNG")
    with pytest.raises(ImageDecodeError) as info:
        HandPipeline(tmp_path, contract()).from_photo(buf.getvalue())
    assert info.value.code == "no_hand"


@pytest.mark.parametrize("kind", ["landmarks", "embedder"])
def test_a_photo_and_its_hand_as_landmarks_give_the_same_features(
    kind: str, shared_data: Path, tmp_path: Path
) -> None:
    """The server's pixel landmarks, converted to MediaPipe's convention, and the same hand sent
    as a phone sends it, reach the head as the same numbers, on real photos."""
    from handserve.images import open_image

    if kind == "embedder":
        weights = shared_data.parent / "weights" / "gesture_embedder.tflite"
        if not weights.is_file():
            pytest.skip(f"{weights} is absent")
        (tmp_path / hand_features.EMBEDDER_FILE).write_bytes(weights.read_bytes())
    pipeline = HandPipeline(tmp_path, contract(kind))
    photos = sorted((shared_data / "asl_photos").glob("[ABLY]/k*_1.jpg"))
    assert photos
    for photo in photos:
        data = photo.read_bytes()
        from_photo = pipeline.from_photo(data)
        hand = hands.find_hand(open_image(data, size=hands.DETECT_SIZE))
        from_phone = pipeline.from_landmarks(landmark_tensors(hand))
        np.testing.assert_allclose(from_phone, from_photo, atol=1e-6)
        assert from_photo.shape == (1, hand_features.FEATURE_SIZE[kind])
