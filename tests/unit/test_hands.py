"""The hand crop rule (handserve.hands): geometry on synthetic inputs, the detector on real photos.

The rule's geometry and its edge cases (no hand, two hands, an image already a hand crop) are
tested with a stand-in detector, so they run everywhere. The detector itself needs MediaPipe's
model files (``scripts/fetch-hand-models.sh``) and, for real hands, ``../shared/data``; those
tests skip cleanly without them.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from handserve import hands
from handserve.artifacts import ArtifactError, InputContract, Manifest
from handserve.images import ImageDecodeError, ImageSpec, decode_image, open_image


class FakeDetector:
    """Returns the hands it was given, whatever the image."""

    def __init__(self, found: list[hands.Hand]) -> None:
        self.found = found
        self.calls = 0

    def hands(self, img: Image.Image) -> list[hands.Hand]:
        self.calls += 1
        return self.found


def hand(left: float, top: float, right: float, bottom: float) -> hands.Hand:
    return hands.Hand((left, top, right, bottom), np.zeros((21, 2), np.float32))


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------ the rule's geometry


def test_the_square_is_centred_on_the_hand_with_the_margin() -> None:
    box, whole = hands.square_around((300, 200, 340, 300), (640, 480))
    assert not whole
    left, top, right, bottom = box
    assert right - left == bottom - top == round(100 * (1 + 2 * hands.HAND_MARGIN))
    assert (left + right) / 2 == pytest.approx(320, abs=1)
    assert (top + bottom) / 2 == pytest.approx(250, abs=1)


def test_a_square_overhanging_the_edge_is_moved_inside_not_shrunk() -> None:
    box, whole = hands.square_around((0, 0, 60, 60), (640, 480))
    assert not whole
    assert box[:2] == (0, 0)
    assert box[2] - box[0] == round(60 * (1 + 2 * hands.HAND_MARGIN))


def test_a_square_taller_than_the_image_is_the_images_shorter_side() -> None:
    # A hand 300 px tall in a 640x360 frame: 420 px with the margin, more than the height.
    box, whole = hands.square_around((200, 30, 330, 330), (640, 360))
    assert not whole
    assert box[3] - box[1] == box[2] - box[0] == 360
    assert box[0] <= 200 and box[2] >= 330


def test_a_hand_filling_the_frame_keeps_the_image_whole() -> None:
    box, whole = hands.square_around((10, 5, 190, 195), (200, 200))
    assert whole
    assert box == (0, 0, 200, 200)


def test_no_hand_raises_the_decoders_error_with_its_own_code() -> None:
    img = Image.new("RGB", (320, 240))
    with pytest.raises(hands.NoHandError, match="320x240") as info:
        hands.find_crop(img, FakeDetector([]))
    assert info.value.code == "no_hand"


def test_of_two_hands_the_larger_is_cropped() -> None:
    small, large = hand(20, 20, 60, 60), hand(400, 200, 520, 380)
    crop = hands.find_crop(Image.new("RGB", (640, 480)), FakeDetector([small, large]))
    assert crop.hands == 2
    left, top, right, bottom = crop.box
    assert left <= 400 and right >= 520 and top <= 200 and bottom >= 380
    assert right - left == bottom - top


def test_a_small_image_is_taken_as_a_hand_crop_without_detection() -> None:
    detector = FakeDetector([])
    img = Image.new("L", (28, 28), 128)
    assert hands.crop_hand(img, detector) is img
    assert detector.calls == 0


def test_a_sign_mnist_sized_image_decodes_the_same_with_and_without_the_crop() -> None:
    """28x28 grey hand crops (Sign MNIST) stay whole: a crop contract changes nothing for them."""
    rng = np.random.default_rng(0)
    data = png(Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)))
    plain = decode_image(data, ImageSpec(28, 28, 1))
    cropped = decode_image(data, ImageSpec(28, 28, 1, "hand"))
    np.testing.assert_array_equal(plain, cropped)


def test_an_unknown_crop_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown crop 'face'"):
        decode_image(png(Image.new("RGB", (8, 8))), ImageSpec(8, 8, 3, "face"))


# ------------------------------------------------------------------ post-processing pieces


def test_ssd_anchors_are_mediapipes_2016_centres() -> None:
    anchors = hands._anchors()
    assert anchors.shape == (2016, 2)
    assert anchors.min() > 0 and anchors.max() < 1
    # 24x24 grid at stride 8, two anchors per cell; then 12x12 with six per cell
    np.testing.assert_allclose(anchors[0], [0.5 / 24, 0.5 / 24])
    np.testing.assert_allclose(anchors[1152], [0.5 / 12, 0.5 / 12])
    assert len({tuple(a) for a in anchors[1152:1158]}) == 1


def test_weighted_nms_merges_overlaps_by_score_and_keeps_the_rest() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.6, 0.8], np.float32)
    kps = np.zeros((3, 7, 2), np.float32)
    out = hands._weighted_nms(boxes, scores, kps)
    assert len(out) == 2
    merged, _, score = out[0]
    assert score == pytest.approx(0.9)
    assert merged[0] == pytest.approx(0.6 / 1.5)  # (0 * 0.9 + 1 * 0.6) / 1.5
    np.testing.assert_allclose(out[1][0], [50, 50, 60, 60])


# ------------------------------------------------------------------ model files


def test_missing_models_say_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(hands.HandModelsMissing, match=r"fetch-hand-models\.sh"):
        hands._read_models(tmp_path)
    assert not hands.models_ok(tmp_path)


def test_a_changed_model_file_is_refused(tmp_path: Path) -> None:
    for name in hands.MODEL_SHA256:
        (tmp_path / name).write_bytes(b"not the model")
    with pytest.raises(hands.HandModelsMissing, match="sha256 differs"):
        hands._read_models(tmp_path)


def test_a_wheel_with_other_files_is_refused(tmp_path: Path) -> None:
    wheel = tmp_path / "mediapipe.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for member in hands.WHEEL_MEMBERS.values():
            archive.writestr(member, b"tampered")
    with pytest.raises(hands.HandModelsMissing, match="not the expected file"):
        hands.extract_from_wheel(wheel, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_task_bundle_is_read_by_its_member_names(tmp_path: Path) -> None:
    bundle = tmp_path / "hand_landmarker.task"
    with zipfile.ZipFile(bundle, "w") as archive:
        for ours, theirs in hands.TASK_MEMBERS.items():
            archive.writestr(theirs, ours.encode())
    models = hands._read_models(bundle)
    assert models == {name: name.encode() for name in hands.TASK_MEMBERS}
    broken = tmp_path / "other.task"
    with zipfile.ZipFile(broken, "w") as archive:
        archive.writestr("something.tflite", b"")
    with pytest.raises(hands.HandModelsMissing, match=r"not a MediaPipe hand_landmarker\.task"):
        hands._read_models(broken)


# ------------------------------------------------------------------ the contract


def _manifest_dict(**inp) -> dict:
    return {
        "schema_version": 1,
        "name": "m",
        "version": 1,
        "labels": ["a", "b"],
        "input": {"height": 28, "width": 28, "channels": 1, "color_mode": "grayscale", **inp},
        "formats": {},
        "files": [],
    }


def test_the_manifest_carries_the_crop_and_older_manifests_mean_none() -> None:
    man = Manifest.from_dict(_manifest_dict(crop="hand"))
    assert man.input.crop == "hand"
    assert man.input.image_spec.crop == "hand"
    assert Manifest.from_dict(man.to_dict()).input.crop == "hand"
    assert Manifest.from_dict(_manifest_dict()).input.crop is None
    with pytest.raises(ArtifactError, match=r"input\.crop"):
        Manifest.from_dict(_manifest_dict(crop="face"))
    with pytest.raises(ValueError, match=r"input\.crop"):
        InputContract(28, 28, 1, crop="Hand")


# ------------------------------------------------------------------ the real detector

needs_models = pytest.mark.skipif(
    not hands.models_available(),
    reason=f"MediaPipe hand models not in {hands.models_source()} (scripts/fetch-hand-models.sh)",
)


@needs_models
def test_a_blank_photo_has_no_hand_and_the_decoder_says_so_with_its_code() -> None:
    blank = Image.new("RGB", (640, 480), (200, 200, 200))
    with pytest.raises(hands.NoHandError):
        hands.crop_hand(blank)
    with pytest.raises(ImageDecodeError) as info:
        decode_image(png(blank), ImageSpec(64, 64, 3, "hand"))
    assert info.value.code == "no_hand"


def _photos(shared_data: Path) -> list[Path]:
    folder = shared_data / "asl_photos"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    return sorted(folder.glob("*/*.jpg"))


@needs_models
@pytest.mark.shared_data
def test_a_hand_is_found_in_at_least_95_percent_of_the_shared_photos(shared_data: Path) -> None:
    photos = _photos(shared_data)
    detector = hands.HandDetector()
    found = 0
    for path in photos:
        img = open_image(path.read_bytes(), size=hands.DETECT_SIZE)
        try:
            crop = hands.find_crop(img, detector)
        except hands.NoHandError:
            continue
        found += 1
        left, top, right, bottom = crop.box
        assert 0 <= left < right <= img.width and 0 <= top < bottom <= img.height
        assert crop.whole or right - left == bottom - top
    assert found >= 0.95 * len(photos), f"hand found in {found}/{len(photos)}"


@needs_models
@pytest.mark.shared_data
def test_the_crop_follows_the_hand_and_a_crop_of_it_stays_whole(shared_data: Path) -> None:
    """Move the photo inside a larger canvas: the crop moves with it. Crop the photo by the
    rule: the hand now fills the frame, and the rule keeps that image whole."""
    photo = next(p for p in _photos(shared_data) if p.name == "kennethowen_1.jpg")
    img = open_image(photo.read_bytes()).convert("RGB")
    detector = hands.HandDetector()
    first = hands.find_crop(img, detector)
    assert not first.whole
    canvas = Image.new("RGB", (img.width + 200, img.height + 120), (90, 90, 90))
    canvas.paste(img, (200, 120))
    moved = hands.find_crop(canvas, detector)
    np.testing.assert_allclose(
        np.array(moved.box) - [200, 120, 200, 120],
        first.box,
        atol=0.06 * (first.box[2] - first.box[0]),
    )
    close_up = img.crop(first.box)
    assert hands.find_crop(close_up, detector).whole


def test_a_phone_photo_is_decoded_at_the_detectors_size_not_the_models(monkeypatch) -> None:
    """A 12 MP JPEG for a 28-px model: the detector gets it at 1/4 scale (1008×756), enough
    for a small hand; without the crop it would be decoded at 1/8 (504×378)."""
    seen: list[tuple[int, int]] = []

    class Recorder(FakeDetector):
        def hands(self, img: Image.Image) -> list[hands.Hand]:
            seen.append(img.size)
            return [hand(400, 300, 600, 500)]

    monkeypatch.setattr(hands, "detector", lambda: Recorder([]))
    buf = io.BytesIO()
    Image.new("RGB", (4032, 3024), (120, 90, 60)).save(buf, format="JPEG", quality=80)
    out = decode_image(buf.getvalue(), ImageSpec(28, 28, 1, "hand"))
    assert out.shape == (28, 28, 1)
    assert seen == [(1008, 756)]
