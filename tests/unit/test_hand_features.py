"""Hand records and features (handserve.hand_features), and folders of photos as hand records
(training.data.hands): synthetic hands everywhere; MediaPipe's embedder and real photos only
where ../shared and the hand models are there (skipped cleanly otherwise)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from handserve import hand_features as hf

RNG = np.random.default_rng(0)
#: A hand-like shape: the wrist at 0, four knuckles about one unit away, fingertips further.
SHAPE = np.concatenate(
    [
        np.zeros((1, 3)),
        RNG.normal(0, 0.3, (4, 3)) + np.asarray([0, -1, 0]),
        RNG.normal(0, 0.6, (16, 3)),
    ]
)
SHAPE[5], SHAPE[9], SHAPE[13], SHAPE[17] = (
    [-0.4, -1, 0],
    [-0.1, -1.1, 0],
    [0.2, -1, 0],
    [0.5, -0.9, 0],
)


def a_hand(
    cx: float = 0.5,
    cy: float = 0.6,
    size: float = 0.15,
    width: int = 640,
    height: int = 480,
    handedness: float = 0.9,
    shape: np.ndarray = SHAPE,
) -> np.ndarray:
    """A record of ``shape`` drawn at (cx, cy) of a width x height image, ``size`` of its
    longer side per unit (as the landmark model would report it)."""
    longer = max(width, height)
    pix = shape * size * longer + [cx * width, cy * height, 0]
    image = np.stack(
        [pix[:, 0] / width, pix[:, 1] / height, shape[:, 2] * size * longer / width], 1
    )
    world = shape * 0.03
    return hf.pack(image, world, handedness, width, height)


def mirrored(record: np.ndarray) -> np.ndarray:
    image, world, handedness, size = hf.unpack(record)
    image, world = image[0].copy(), world[0].copy()
    image[:, 0] = 1 - image[:, 0]
    world[:, 0] *= -1
    return hf.pack(image, world, 1 - float(handedness[0]), *size[0])


# ------------------------------------------------------------------------------- records


def test_a_record_holds_what_the_landmark_model_reports() -> None:
    rec = a_hand(width=800, height=600, handedness=0.25)
    assert rec.shape == (hf.RECORD_SIZE,)
    image, world, handedness, size = hf.unpack(rec)
    np.testing.assert_allclose(world[0], SHAPE * 0.03, rtol=1e-6)
    assert handedness[0] == pytest.approx(0.25) and size[0].tolist() == [800, 600]
    assert image.shape == (1, 21, 3)


@pytest.mark.parametrize(
    ("image", "handedness", "size", "says"),
    [
        (np.zeros((20, 3)), 0.5, (640, 480), "image landmarks must be 21 x 3"),
        (np.full((21, 3), np.nan), 0.5, (640, 480), "non-finite"),
        (np.zeros((21, 3)), 1.5, (640, 480), "handedness"),
        (np.zeros((21, 3)), 0.5, (0, 480), "image size"),
    ],
)
def test_bad_landmarks_are_refused_naming_what(image, handedness, size, says) -> None:
    with pytest.raises(hf.HandFeatureError, match=says):
        hf.pack(image, np.zeros((21, 3)), handedness, *size)


# ------------------------------------------------------------------------------ landmarks


def test_landmark_features_ignore_where_the_hand_is_and_how_big() -> None:
    base = hf.landmark_features(a_hand())
    for other in (a_hand(cx=0.2, cy=0.3), a_hand(size=0.4), a_hand(width=1280, height=960)):
        np.testing.assert_allclose(hf.landmark_features(other), base, atol=1e-5)
    assert base.shape == (1, hf.FEATURE_SIZE["landmarks"])


def test_a_left_hand_reads_as_the_same_right_hand() -> None:
    right = a_hand(handedness=0.9)
    np.testing.assert_allclose(
        hf.landmark_features(mirrored(right)), hf.landmark_features(right), atol=1e-5
    )


def test_another_shape_gives_other_features() -> None:
    bent = SHAPE.copy()
    bent[8] = [0, -0.5, -0.5]  # index fingertip folded in
    assert (
        np.abs(hf.landmark_features(a_hand(shape=bent)) - hf.landmark_features(a_hand())).max()
        > 0.1
    )


# --------------------------------------------------------------------------------- embedder


def _reference_embedder_inputs(rec: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """MediaPipe's calculators transcribed line by line from landmarks_to_matrix_calculator.cc
    (NormalizeLandmarkAspectRatio, no rotation, NormalizeObject with origin 0; its max_x starts
    at FLT_MIN as there) and handedness_to_matrix_calculator.cc, then the 3 x 21 matrix read
    column-major as TensorConverterCalculator copies it."""
    image, world, handedness, size = (a[0] for a in hf.unpack(rec))
    width, height = float(size[0]), float(size[1])

    def normalize_object(points: list[list[float]]) -> list[list[float]]:
        origin = points[0]
        out, min_x, max_x, min_y, max_y = [], 3.4e38, 1.17549435e-38, 3.4e38, 1.17549435e-38
        for p in points:
            q = [p[0] - origin[0], p[1] - origin[1], p[2] - origin[2]]
            out.append(q)
            min_x, max_x = min(min_x, q[0]), max(max_x, q[0])
            min_y, max_y = min(min_y, q[1]), max(max_y, q[1])
        scale = max(max_x - min_x, max_y - min_y) + 1e-5
        return [[v / scale for v in q] for q in out]

    max_dim = max(width, height)
    aspect = [
        [(p[0] - 0.5) * width / max_dim + 0.5, (p[1] - 0.5) * height / max_dim + 0.5, p[2]]
        for p in image.tolist()
    ]
    hand_matrix = np.asarray(normalize_object(aspect)).T  # 3 x 21, rows x, y, z
    world_matrix = np.asarray(normalize_object(world.tolist())).T
    as_tensor = lambda m: m.flatten(order="F").reshape(21, 3)  # noqa: E731 - column-major copy
    return as_tensor(hand_matrix), float(handedness), as_tensor(world_matrix)


def test_the_embedder_is_fed_as_mediapipes_gesture_graph_feeds_it() -> None:
    rec = a_hand(cx=0.3, cy=0.7, width=640, height=360, handedness=0.2)
    hand, handedness, world = hf.embedder_inputs(rec)
    want_hand, want_handedness, want_world = _reference_embedder_inputs(rec)
    np.testing.assert_allclose(hand[0], want_hand, atol=1e-5)
    np.testing.assert_allclose(world[0], want_world, atol=1e-5)
    assert handedness.shape == (1, 1) and handedness[0, 0] == pytest.approx(want_handedness)
    assert np.abs(hand[0, 0]).max() == 0  # the wrist is the origin


def _task_bundle(embedder: bytes) -> bytes:
    """A zip holding a zip holding the embedder, as gesture_recognizer.task is laid out."""
    inner, outer = io.BytesIO(), io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("gesture_embedder.tflite", embedder)
        z.writestr("canned_gesture_classifier.tflite", b"other")
    with zipfile.ZipFile(outer, "w") as z:
        z.writestr("hand_landmarker.task", b"not this")
        z.writestr("hand_gesture_recognizer.task", inner.getvalue())
    return outer.getvalue()


def test_the_embedder_is_taken_from_a_file_or_from_mediapipes_bundle(tmp_path: Path) -> None:
    (tmp_path / "e.tflite").write_bytes(b"TFL3 model")
    (tmp_path / "gesture_recognizer.task").write_bytes(_task_bundle(b"TFL3 model"))
    assert hf.read_embedder(tmp_path / "e.tflite") == b"TFL3 model"
    assert hf.read_embedder(tmp_path / "gesture_recognizer.task") == b"TFL3 model"
    with zipfile.ZipFile(tmp_path / "other.task", "w") as z:
        z.writestr("hand_detector.tflite", b"x")
    with pytest.raises(hf.HandFeatureError, match=r"holds no gesture_embedder\.tflite"):
        hf.read_embedder(tmp_path / "other.task")
    with pytest.raises(hf.HandFeatureError, match="not found"):
        hf.read_embedder(tmp_path / "missing.tflite")


@pytest.fixture(scope="module")
def embedder(shared_data: Path) -> hf.GestureEmbedder:
    path = shared_data.parent / "weights" / "gesture_embedder.tflite"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return hf.GestureEmbedder(hf.read_embedder(path))


def test_mediapipes_embedder_reads_the_hand_not_where_it_is(embedder: hf.GestureEmbedder) -> None:
    base = embedder(a_hand())
    assert base.shape == (1, 128) and np.isfinite(base).all()
    moved = embedder(np.stack([a_hand(cx=0.25, cy=0.3, size=0.3), a_hand(width=1280, height=960)]))
    np.testing.assert_allclose(moved, np.repeat(base, 2, axis=0), atol=1e-4)
    bent = SHAPE.copy()
    bent[8] = [0, -0.5, -0.5]
    assert np.abs(embedder(a_hand(shape=bent)) - base).max() > 1e-2


# ------------------------------------------------------------------------------ augmentation


def test_augmentation_with_nothing_asked_leaves_the_hand_as_it_was() -> None:
    rec = a_hand()[None]
    same = hf.augment(
        rec, np.random.default_rng(1), mirror=0, rotate_deg=0, tilt_deg=0, scale=0, jitter=0
    )
    np.testing.assert_allclose(same, rec, atol=1e-5)


def test_augmentation_is_seeded_and_keeps_the_hand_a_hand() -> None:
    recs = np.stack([a_hand()] * 50)
    one = hf.augment(recs, np.random.default_rng(3))
    np.testing.assert_array_equal(one, hf.augment(recs, np.random.default_rng(3)))
    assert np.abs(one - recs).max() > 1e-3
    # a turn, a tilt and a mirror keep the bones' lengths (world, metres); jitter moves little
    _, world, handedness, _ = hf.unpack(one)
    bones = np.linalg.norm(world[:, 9] - world[:, 0], axis=1)
    np.testing.assert_allclose(bones, np.linalg.norm(SHAPE[9] * 0.03), rtol=0.1)
    assert {round(float(h), 3) for h in handedness} == {0.9, 0.1}  # mirrored: the other hand


def test_a_mirrored_copy_reads_the_same_landmark_features() -> None:
    rec = a_hand()[None]
    flipped = hf.augment(
        rec, np.random.default_rng(0), mirror=1.0, rotate_deg=0, tilt_deg=0, scale=0, jitter=0
    )
    assert hf.unpack(flipped)[2][0] == pytest.approx(0.1)
    np.testing.assert_allclose(hf.landmark_features(flipped), hf.landmark_features(rec), atol=1e-5)


# ------------------------------------------------------------------- folders as hand records


def _photo(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not decoded in these tests")


def test_groups_are_signers_or_sources_and_one_roboflow_set_is_one_group(tmp_path: Path) -> None:
    from training.data import hands as hd

    signers, photos = tmp_path / "asl_signers", tmp_path / "asl_photos"
    for path in (
        signers / "massey/A/hand3_a_bot_seg_1_cropped.jpg",
        signers / "massey/B/hand1_b_bot_seg_1_cropped.jpg",
        signers / "roboflow/A/A0_2aa57bd8.jpg",
        signers / "lifunn/B/12.jpg",
        photos / "A/davidlee_1.jpg",
        photos / "B/carbonara_2.jpg",
    ):
        _photo(path)
    got = {p.path.name: (p.label, p.group) for p in hd.list_photos(signers)}
    assert got == {
        "hand3_a_bot_seg_1_cropped.jpg": ("A", "massey/hand3"),
        "hand1_b_bot_seg_1_cropped.jpg": ("B", "massey/hand1"),
        "A0_2aa57bd8.jpg": ("A", "roboflow"),
        "12.jpg": ("B", "lifunn"),
    }
    got = {p.path.name: (p.label, p.group) for p in hd.list_photos(photos)}
    assert got == {"davidlee_1.jpg": ("A", "roboflow"), "carbonara_2.jpg": ("B", "carbonara")}


def test_hands_are_found_once_and_photos_without_one_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.data import hands as hd

    root = tmp_path / "signs"
    for label in "AB":
        for n in range(3):
            _photo(root / label / f"alpha_{n}.jpg")
    calls: list[str] = []

    def fake_record(path: Path) -> np.ndarray | None:
        calls.append(path.name)
        if path.parent.name == "B" and path.name == "alpha_0.jpg":
            return None  # no hand in this one
        return a_hand(shape=SHAPE * (1.0 if path.parent.name == "A" else -1.0))

    monkeypatch.setattr(hd, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(hd, "_record_of", fake_record)
    monkeypatch.setattr(hd.hands, "check_models", lambda: None)
    table = hd.load_table([root])
    assert len(calls) == 6 and len(table.y) == 5
    assert table.no_hand == [str(root / "B" / "alpha_0.jpg")] and table.no_hand_groups == ["alpha"]
    assert table.class_names == ["A", "B"] and table.y.tolist() == [0, 0, 0, 1, 1]
    again = hd.load_table([root])
    assert len(calls) == 6  # every photo came from the cache
    np.testing.assert_array_equal(again.x, table.x)
    # a changed photo is looked at again
    (root / "A" / "alpha_1.jpg").write_bytes(b"another photo, another size")
    hd.load_table([root])
    assert calls[6:] == ["alpha_1.jpg"]


def test_a_class_without_any_hand_is_an_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.data import hands as hd

    for label in "AB":
        _photo(tmp_path / "signs" / label / "x_1.jpg")
    monkeypatch.setattr(hd, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(hd.hands, "check_models", lambda: None)
    monkeypatch.setattr(hd, "_record_of", lambda p: a_hand() if p.parent.name == "A" else None)
    with pytest.raises(hd.DataError, match="class\\(es\\) B"):
        hd.load_table([tmp_path / "signs"])


# ------------------------------------------------------------------------ real photos


def test_a_real_hand_is_reported_in_mediapipes_conventions(shared_data: Path) -> None:
    from handserve import hands
    from handserve.images import open_image

    if not hands.models_available():
        pytest.skip("MediaPipe's hand models are not fetched (scripts/fetch-hand-models.sh)")
    photo = shared_data / "asl_photos" / "B" / "kennethowen_1.jpg"
    img = open_image(photo.read_bytes(), size=hands.DETECT_SIZE)
    hand = hands.find_hand(img)
    assert hand.image_landmarks is not None and hand.world_landmarks is not None
    width, height = img.size
    np.testing.assert_allclose(
        hand.image_landmarks[:, :2] * [width, height], hand.landmarks, atol=1e-2
    )
    assert hand.image_landmarks[0, 2] == pytest.approx(0.0, abs=1e-3)  # depth from the wrist
    palm = np.linalg.norm(hand.world_landmarks[9] - hand.world_landmarks[0])
    assert 0.04 < palm < 0.15  # metres, a human hand
    assert 0.0 <= (hand.handedness or 0) <= 1.0 and (hand.presence or 0) > 0.5
    assert hf.record(hand).shape == (hf.RECORD_SIZE,)


def test_a_hand_found_in_a_turned_photo_is_turned_back(shared_data: Path) -> None:
    """The upright photo's hand and the same hand found in the photo turned by a quarter, three
    quarters and half a turn agree once turned back (pixels, world landmarks, depth)."""
    from handserve import hands
    from handserve.images import open_image

    if not hands.models_available():
        pytest.skip("MediaPipe's hand models are not fetched (scripts/fetch-hand-models.sh)")
    detector = hands.HandDetector()
    photo = shared_data / "asl_photos" / "L" / "carbonara_1.jpg"
    img = open_image(photo.read_bytes(), size=hands.DETECT_SIZE).convert("RGB")
    upright = detector.hands(img)[0]
    assert upright.world_landmarks is not None and upright.image_landmarks is not None
    for turn in hands._TURNS:
        (found,) = detector.hands(img.transpose(turn))[:1]
        back = hands._turned_back(found, turn, img.size)
        assert back.world_landmarks is not None and back.image_landmarks is not None
        assert np.abs(back.landmarks - upright.landmarks).max() < 6  # pixels
        assert np.abs(back.world_landmarks - upright.world_landmarks).max() < 0.01  # metres
        np.testing.assert_allclose(
            back.image_landmarks[:, :2] * img.size, back.landmarks, atol=1e-2
        )
        assert np.abs(back.image_landmarks[:, 2] - upright.image_landmarks[:, 2]).max() < 0.02
