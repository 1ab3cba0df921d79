"""The demo page's camera mode in a real headless Chromium, against a real server.

Run: ``pytest -m browser tests/service/test_demo_camera.py``. Chromium uses a video file as its
camera (``--use-fake-device-for-media-stream --use-file-for-fake-video-capture=FILE.y4m``); the
test makes the file from pictures, each held for a second, so the page sees a "signer" spell a
sequence. What the page must spell is what the server answers for each picture (asked over
``/predict`` first), so the assertion holds for any model, trained well or not.

Three sets of pictures:

- always: digits on black, read by the tiny digits model on the whole frame (as ``make run``'s
  model reads a camera), with a blank-free sequence whose consecutive answers differ;
- where MediaPipe's hand models are fetched and ``../shared/data/asl_photos`` is present: real
  hand photos, with empty frames between them (no hand: the letter is released), read by a
  version whose contract crops the hand, so the browser's hand models, crop and classifier
  (device mode) are compared with the server's on the same frames;
- there too: a photo of each letter of :data:`WORD`, with empty frames between, read by a
  hand-feature (landmark) head as the README's sign-language command makes one (trained here on
  those letters' photos only), in server, device, landmarks and both modes in one page.

Each mode's screenshot is saved in the test's tmp folder; ``HANDSERVE_DEMO_SCREENSHOT=PATH``
also writes the digits one of both modes there (docs/images/demo-camera.png). The README's
(docs/images/demo-camera-asl.png, the real landmark model on hand-only photos) is made by
``benchmarks/demo_camera.py --screenshot``; the test's hand-photo ones show people's faces from
../shared and stay out of the repository.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest
import requests
from PIL import Image, ImageDraw

from handserve import artifacts, hands
from handserve.hand_pipeline import LANDMARK_TENSORS
from service.fake_camera import (
    CHROMIUM,
    CHROMIUM_ARGS,
    HEIGHT,
    WIDTH,
    camera_args,
    held,
    on_frame,
    write_y4m,
)
from service.local_server import wait_ready
from tests.conftest import shared_dir
from tests.service.helpers import copy_version, running_server

from ..export.test_hand_export import _train_and_export

pytestmark = [pytest.mark.browser, pytest.mark.server]

REPO = Path(__file__).resolve().parents[2]
if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is absent (apt-get install chromium, or run make test)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright Python package is not installed"
)

VENDORED = REPO / "service" / "static" / "vendor" / "litertjs" / "core" / "index.js"
needs_vendor = pytest.mark.skipif(
    not VENDORED.is_file(), reason="LiteRT.js is not vendored (scripts/vendor-web.sh)"
)
HOLD_FRAMES = 12  # each picture held 1.2 s
GAP_FRAMES = 5  # empty frames between hand photos (no hand: the letter is released)
#: Candidates for the hand video: a letter each from the four photographers of asl_photos.
HAND_PHOTOS = [
    f"{letter}/{who}_1.jpg"
    for letter, who in zip(
        "ABCLVYWIK", ["kennethowen", "davidlee", "carbonara", "mtritran"] * 3, strict=False
    )
]
#: The word the landmark model's video spells: a photo of each letter from asl_photos.
WORD = "CLAW"
TIMEOUT_MS = 120_000  # the page's first frames on a 2-core machine shared with others are slow


# ---------------------------------------------------------------------------------- video
def _digit_pictures() -> list[Image.Image]:
    """Pictures for the digits model, which reads the whole frame at 28x28: the repository's
    digit examples and a few drawn digits, stretched over the frame as a digit held close to
    the camera fills it, and blocky patterns (28x28 cells), which a barely trained model tells
    apart more surely than digits."""
    small = [
        Image.open(REPO / "examples" / "images" / f"digit_{d}.png").convert("L") for d in (3, 7)
    ]
    strokes = [
        [(56, 16), (56, 96)],
        [(34, 18), (78, 18), (86, 56), (78, 94), (34, 94), (26, 56), (34, 18)],
        [(70, 96), (70, 16), (24, 70), (90, 70)],
        [(28, 30), (56, 16), (84, 32), (30, 94), (88, 94)],
    ]
    for line in strokes:
        img = Image.new("L", (112, 112), 0)
        ImageDraw.Draw(img).line(line, fill=255, width=12, joint="curve")
        small.append(img)
    rng = np.random.default_rng(7)
    for _ in range(10):
        small.append(Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)))
    return [img.resize((WIDTH, HEIGHT), Image.Resampling.NEAREST).convert("RGB") for img in small]


def _label(url: str, model: str, img: Image.Image) -> tuple[str, float] | None:
    """What the server answers for one frame, with the lead of its top score over the next
    (None: no hand, or answers that differ between the frame as a PNG and as the JPEG the page
    sends: a picture on a knife's edge is no use for checking what the page spells)."""
    answers = []
    for fmt, options in (("PNG", {}), ("JPEG", {"quality": 92})):
        buf = io.BytesIO()
        img.save(buf, fmt, **options)
        resp = requests.post(
            f"{url}/predict",
            files={"file": (f"frame.{fmt.lower()}", buf.getvalue(), f"image/{fmt.lower()}")},
            data={"model": model, "top_k": "2"},
            timeout=120,
        )
        if resp.status_code == 422 and resp.json()["error"]["code"] == "no_hand":
            return None
        assert resp.status_code == 200, resp.text
        best, second = resp.json()["predictions"]
        answers.append((str(best["label"]), float(best["score"] - second["score"])))
    if answers[0][0] != answers[1][0]:
        return None
    return answers[0][0], min(lead for _, lead in answers)


def _sequence(
    labelled: list[tuple[Image.Image, tuple[str, float]]], n: int, distinct: bool
) -> list[tuple[Image.Image, str]]:
    """``n`` pictures; with ``distinct``, one per answer, the most decided picture of each (so
    a JPEG's few grey levels do not turn the answer), so that consecutive answers (cyclically)
    differ and a letter held without a break between them is still read as a new letter."""
    if not distinct:
        return [(img, label) for img, (label, _) in labelled[:n]]
    best: dict[str, tuple[Image.Image, float]] = {}
    for img, (label, lead) in labelled:
        if label not in best or lead > best[label][1]:
            best[label] = (img, lead)
    if len(best) < 2:
        pytest.fail(f"the model answers {sorted(best)} for every picture: nothing to spell")
    ranked = sorted(best.items(), key=lambda kv: -kv[1][1])[:n]
    return [(img, label) for label, (img, _) in ranked]


# -------------------------------------------------------------------------------- servers
@pytest.fixture(scope="module")
def landmark_head(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """A hand-feature (landmark) head as the README's sign-language command makes one
    (``configs/asl_photos.yaml``, ``training.hand_export``), trained on a few real photos of
    :data:`WORD`'s letters only (asl_photos and some of asl_signers' massey signers: about 80
    photos, seconds), so that what the page spells is a word; None where ../shared's photos or
    MediaPipe's hand models are absent."""
    data = shared_dir() / "data"
    photos, signers = data / "asl_photos", data / "asl_signers" / "massey"
    if not (hands.models_available() and photos.is_dir() and signers.is_dir()):
        return None
    tmp = tmp_path_factory.mktemp("landmark_head")
    for root, source, pick in (
        (tmp / "photos", photos, slice(None)),
        (tmp / "signers" / "massey", signers, slice(None, None, 6)),
    ):
        for letter in sorted(set(WORD)):
            for photo in sorted((source / letter).glob("*.jpg"))[pick]:
                link = root / letter / photo.name
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(photo)
    from training.data import hands as hand_records

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hand_records, "CACHE_DIR", tmp / "cache")  # not the checkout's .cache
        code, _, version = _train_and_export(
            (tmp / "signers", tmp / "photos"), tmp, "--epochs", "30"
        )
    assert code == 0
    return version


@pytest.fixture(scope="module")
def camera_models(
    tiny_export: Path, landmark_head: Path | None, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """``digits`` (the tiny export) and, where the hand models are fetched, ``handcrop``: the
    same files under a contract that crops the hand first; where ../shared is there too,
    ``letters``: :func:`landmark_head`."""
    models = tmp_path_factory.mktemp("camera") / "models"
    copy_version(tiny_export, models, "digits", 1)
    if hands.models_available():
        dst = copy_version(tiny_export, models, "handcrop", 1)
        data = artifacts.read_manifest(dst).to_dict()
        data["input"]["crop"] = "hand"
        artifacts.write_manifest(dst, artifacts.Manifest.from_dict(data))
    if landmark_head is not None:
        copy_version(landmark_head, models, "letters", 1)
    return models


@pytest.fixture(scope="module")
def camera_server(camera_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("camera_bentoml_home")
    env = {"HANDSERVE_RUNTIME": "litert", "HANDSERVE_WORKERS": "1"}
    env["HANDSERVE_DEFAULT_MODEL"] = "digits"
    with running_server(camera_models, home, env) as (url, proc, _):
        wait_ready(url, proc, timeout=180)
        yield url


@pytest.fixture(scope="module")
def digit_video(camera_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    labelled = [(img, _label(camera_server, "digits", img)) for img in _digit_pictures()]
    seq = _sequence([(i, lab) for i, lab in labelled if lab is not None], 4, distinct=True)
    assert len(seq) >= 2
    frames = held([img for img, _ in seq], HOLD_FRAMES)
    path = write_y4m(frames, tmp_path_factory.mktemp("video") / "digits.y4m")
    return {"path": path, "labels": [lab for _, lab in seq], "model": "digits"}


@pytest.fixture(scope="module")
def hand_video(camera_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    photos = shared_dir() / "data" / "asl_photos"
    if not hands.models_available():
        pytest.skip("MediaPipe's hand models are not fetched (scripts/fetch-hand-models.sh)")
    if not photos.is_dir():
        pytest.skip(f"{photos} is absent (real hand photos)")
    labelled = []
    for name in HAND_PHOTOS:
        img = on_frame(Image.open(photos / name))
        label = _label(camera_server, "handcrop", img)
        if label is not None:
            labelled.append((img, label))
    assert len(labelled) >= 3, "the hand detector should find the hand in most of these photos"
    labelled.sort(key=lambda item: -item[1][1])  # the most decided answers first
    seq = _sequence(labelled, 4, distinct=False)
    frames = held([img for img, _ in seq], HOLD_FRAMES, GAP_FRAMES)
    path = write_y4m(frames, tmp_path_factory.mktemp("video") / "hands.y4m")
    return {"path": path, "labels": [lab for _, lab in seq], "model": "handcrop"}


@pytest.fixture(scope="module")
def landmark_video(
    camera_server: str,
    landmark_head: Path | None,
    shared_data: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """:data:`WORD` fingerspelled: for each letter the asl_photos photo the served ``letters``
    model reads as that letter most surely (or, where it reads none so, its most decided
    photo), held a second, with empty frames between; ``labels``: what the server answers."""
    if landmark_head is None:
        pytest.skip("MediaPipe's hand models are not fetched (scripts/fetch-hand-models.sh)")
    seq = []
    for letter in WORD:
        read = []
        for photo in sorted((shared_data / "asl_photos" / letter).glob("*.jpg")):
            img = on_frame(Image.open(photo))
            answer = _label(camera_server, "letters", img)
            if answer is not None:
                read.append((answer[0] == letter, answer[1], img, answer[0]))
        assert read, f"no photo of {letter} gives a hand the server reads the same as PNG and JPEG"
        _, _, img, label = max(read, key=lambda r: (r[0], r[1]))
        seq.append((img, label))
    frames = held([img for img, _ in seq], HOLD_FRAMES, GAP_FRAMES)
    path = write_y4m(frames, tmp_path_factory.mktemp("video") / "letters.y4m")
    return {"path": path, "labels": [label for _, label in seq]}


def _browser(pw: Any, video: Path | None) -> Any:
    args = [*CHROMIUM_ARGS, *(camera_args(video) if video is not None else [])]
    return pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)


@contextlib.contextmanager
def _demo_page(url: str, video: Path | None = None, model: str | None = None) -> Iterator[Any]:
    """``/demo/`` in one headless Chromium whose camera plays ``video`` (none: no camera),
    loaded, with ``model`` picked and the camera's hold and confidence floor lowered for the
    test; an error thrown on the page fails the test."""
    with sync_api.sync_playwright() as pw:
        browser = _browser(pw, video)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 1300})
            page.set_default_timeout(TIMEOUT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{url}/demo/")
            if model is not None:
                page.wait_for_selector("#model-select[data-loaded='true']")
                page.wait_for_selector("#camera-panel[data-ready='true']")
                page.select_option("#model-select", model)
                page.fill("#camera-hold", "400")
                page.fill("#camera-min-confidence", "0")
            yield page
            assert not errors, errors
        finally:
            browser.close()


def _spell(page: Any, mode: str, labels: list[str], min_both: int = 0) -> str:
    """Start the camera in ``mode`` and wait for a full round of the sequence to be spelled."""
    page.click("#camera-clear-text")
    page.select_option("#camera-mode", mode)
    page.click("#camera-start")
    page.wait_for_selector("#camera-panel[data-state='running']")
    want = len(labels) + 1
    page.wait_for_function(
        f"document.getElementById('camera-text').dataset.text.length >= {want}"
        f" && Number(document.getElementById('camera-agreement').dataset.both || 0) >= {min_both}",
        timeout=TIMEOUT_MS,
    )
    return str(page.get_attribute("#camera-text", "data-text"))


def _spells(
    page: Any,
    mode: str,
    labels: list[str],
    shot: Path,
    min_both: int = 0,
    readme: bool = False,
    shown: str | None = None,
) -> str:
    """Run the camera in ``mode`` until a round of ``labels`` is spelled, check what the page
    spelled and shows (the letter, its latency and rate, no error; in ``both`` mode the
    agreement over at least ``min_both`` frames, 90% or more), save a screenshot of the card at
    ``shot`` once a picture is read (and, given ``shown``, the model's input is shown as that)
    and stop the camera. Returns the text spelled."""
    text = _spell(page, mode, labels, min_both)
    cycle = "".join(labels) * 6
    assert len(text) >= len(labels) + 1
    assert text in cycle, f"{mode}: spelled {text!r}; the pictures read {labels} in a loop"
    assert page.get_attribute("#camera-running", "data-mode") == mode
    assert page.get_attribute("#camera-letter", "data-label") in set(labels) | {""}
    latency = page.get_attribute("#camera-latency", "data-ms")
    assert latency is not None and int(latency) > 0
    assert float(page.get_attribute("#camera-rate", "data-fps") or 0) > 0
    assert page.locator("#camera-message[data-kind='device']").count() == 0
    assert page.locator("#camera-message[data-kind='server']").count() == 0
    if mode == "both":
        both = int(page.get_attribute("#camera-agreement", "data-both") or 0)
        agree = int(page.get_attribute("#camera-agreement", "data-agree") or 0)
        assert agree / both >= 0.9, f"server and device agreed on {agree} of {both} frames"
        assert "agree on" in page.inner_text("#camera-agreement")
    page.click("#camera-heading")  # the focus off the buttons, for the picture
    page.wait_for_function(
        "document.getElementById('camera-letter').dataset.label !== ''"
        + (
            f" && document.getElementById('camera-input').dataset.shown === {shown!r}"
            if shown
            else ""
        )
    )
    page.locator("#camera-panel").screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    wanted = os.environ.get("HANDSERVE_DEMO_SCREENSHOT")
    if wanted and readme:
        shutil.copyfile(shot, wanted)
    page.click("#camera-stop")
    assert page.get_attribute("#camera-panel", "data-state") == "off"
    return text


def _drawn_hand_box(page: Any) -> list[float]:
    """The box of the hand the browser found, as drawn over the picture; checked to lie in it."""
    box = [
        float(v)
        for v in (page.get_attribute("#camera-panel", "data-hand-box") or "").split(",")
        if v
    ]
    assert len(box) == 4 and 0 <= box[0] < box[2] <= WIDTH and 0 <= box[1] < box[3] <= HEIGHT
    return box


# ---------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("mode", ["server", pytest.param("device", marks=needs_vendor)])
def test_digits_held_to_the_camera_are_spelled(
    camera_server: str, digit_video: dict[str, Any], mode: str, tmp_path: Path
) -> None:
    labels = digit_video["labels"]
    with _demo_page(camera_server, digit_video["path"], "digits") as page:
        before = _spells(page, mode, labels, tmp_path / f"camera-digits-{mode}.png")
        # the model's input (the whole frame, 28x28) is shown as it receives it
        assert page.get_attribute("#camera-input", "data-shown") == "28x28"
        if mode == "device":
            files = page.get_attribute("#camera-panel", "data-device-files") or ""
            assert "model.tflite" in files.split()
            assert int(page.get_attribute("#camera-panel", "data-server-frames") or 0) == 0
        else:
            assert int(page.get_attribute("#camera-panel", "data-device-frames") or 0) == 0
        # the keys: a space, then backspace takes it away again
        page.click("#camera-space")
        assert page.get_attribute("#camera-text", "data-text") == before + " "
        page.click("#camera-backspace")
        assert page.get_attribute("#camera-text", "data-text") == before


@needs_vendor
def test_device_and_server_agree_on_the_same_frames(
    camera_server: str, digit_video: dict[str, Any], tmp_path: Path
) -> None:
    with _demo_page(camera_server, digit_video["path"], "digits") as page:
        shot = tmp_path / "camera-digits-both.png"
        _spells(page, "both", digit_video["labels"], shot, min_both=20, readme=True)


@needs_vendor
@pytest.mark.parametrize("mode", ["server", "both"])
def test_real_hands_are_found_cropped_and_read_alike(
    camera_server: str, hand_video: dict[str, Any], mode: str, tmp_path: Path
) -> None:
    with _demo_page(camera_server, hand_video["path"], "handcrop") as page:
        shot = tmp_path / f"camera-hands-{mode}.png"
        _spells(page, mode, hand_video["labels"], shot, min_both=10 if mode == "both" else 0)
        if mode == "both":
            _drawn_hand_box(page)  # the hand the browser found is drawn inside the picture
            files = (page.get_attribute("#camera-panel", "data-device-files") or "").split()
            assert set(hands.MODEL_SHA256) <= set(files)


@needs_vendor
def test_a_landmark_model_spells_a_word_in_every_mode(
    camera_server: str, landmark_video: dict[str, Any], tmp_path: Path
) -> None:
    """The model of the README's sign-language command (a hand-feature head; here a small one,
    :func:`landmark_head`) in one page, mode after mode: the server finds the hand in each JPEG
    (``server``); the browser finds it and runs the head itself, sending nothing (``device``);
    the browser finds it and sends only the four landmark tensors to the Open Inference Protocol
    (``landmarks``); and both of the first two on each frame, agreeing (``both``)."""
    labels = landmark_video["labels"]
    posted: list[Any] = []
    infer = "/v2/models/letters/versions/1/infer"
    with _demo_page(camera_server, landmark_video["path"], "letters") as page:
        page.on("request", lambda req: posted.append(req) if req.method == "POST" else None)
        for mode in ("server", "device", "landmarks", "both"):
            posted.clear()
            shot = tmp_path / f"camera-letters-{mode}.png"
            # a hand-feature head receives the hand's landmarks: drawn where the page found them
            shown = None if mode == "server" else "landmarks"
            _spells(page, mode, labels, shot, min_both=10 if mode == "both" else 0, shown=shown)
            sent = Counter(urlparse(req.url).path for req in posted)
            assert set(sent) <= {"/predict", infer}, sent
            assert (sent["/predict"] > 0) == (mode in ("server", "both")), (mode, sent)
            assert (sent[infer] > 0) == (mode == "landmarks"), (mode, sent)
            if mode != "server":
                _drawn_hand_box(page)
            if mode == "landmarks":
                body = json.loads(next(r for r in posted if r.url.endswith(infer)).post_data)
                shapes = {t["name"]: tuple(t["shape"]) for t in body["inputs"]}
                assert shapes == LANDMARK_TENSORS  # the hand, no picture
            if mode == "device":
                files = (page.get_attribute("#camera-panel", "data-device-files") or "").split()
                assert {"model.tflite", *hands.MODEL_SHA256} <= set(files)


def test_no_camera_says_so(camera_server: str) -> None:
    # no fake device: headless Chromium has no camera
    with _demo_page(camera_server, None, "digits") as page:
        page.click("#camera-start")
        page.wait_for_selector("#camera-panel[data-state='error']")
        message = page.locator("#camera-message")
        assert message.is_visible()
        kind = message.get_attribute("data-kind")
        assert kind in {"no_camera", "no_permission"}
        assert ("No camera" in message.inner_text()) == (kind == "no_camera")
        assert page.get_attribute("#camera-running", "data-mode") in (None, "")


def test_the_page_resizes_as_pillow_does(camera_server: str) -> None:
    """handpipe.js against Pillow, in the browser: the resize (with its reducing gap), the grey
    conversion, the palm letterbox and the landmark region's affine transform, bit for bit."""
    rng = np.random.default_rng(3)
    small = (rng.random((48, 64, 3)) * 255).astype(np.uint8)
    img = Image.fromarray(small).resize((WIDTH, HEIGHT))
    arr = np.asarray(img)
    import math

    angle, side, cx, cy = 0.4, 300.0, 330.0, 250.0
    cos, sin, unit = math.cos(angle), math.sin(angle), side / 224
    a, b, d, e = cos * unit, -sin * unit, sin * unit, cos * unit
    c, f = cx - a * 112 - b * 112, cy - d * 112 - e * 112
    want = {
        "gray28": np.asarray(
            img.convert("L").resize((28, 28), Image.Resampling.BILINEAR, None, 3.0)
        ),
        "rgb96": np.asarray(img.resize((96, 96), Image.Resampling.BILINEAR, None, 3.0)),
        "palm": np.asarray(img.resize((192, 144), Image.Resampling.BILINEAR)),
        "region": np.asarray(
            img.transform(
                (224, 224),
                Image.Transform.AFFINE,
                (a, b, c, d, e, f),
                resample=Image.Resampling.BILINEAR,
            )
        ),
    }
    with _demo_page(camera_server) as page:
        got = page.evaluate(
            """async ([pixels, w, h, region]) => {
                const hp = await import('./handpipe.js');
                const img = {data: Uint8Array.from(pixels), width: w, height: h, channels: 3};
                const m = hp.regionAffine(region);
                return {
                  gray28: Array.from(hp.resize(hp.toGray(img), 28, 28).data),
                  rgb96: Array.from(hp.resize(img, 96, 96).data),
                  palm: Array.from(hp.resampleBilinear(img, 192, 144).data),
                  region: Array.from(hp.regionInput(img, m), (v) => Math.round(v * 255)),
                };
            }""",
            [
                arr.reshape(-1).tolist(),
                WIDTH,
                HEIGHT,
                {"cx": cx, "cy": cy, "side": side, "angle": angle},
            ],
        )
    for name, expected in want.items():
        np.testing.assert_array_equal(
            np.asarray(got[name], dtype=np.uint8), expected.reshape(-1), err_msg=name
        )


def test_version_files_and_hand_models_are_served_checksummed(camera_server: str) -> None:
    import hashlib

    listing = requests.get(f"{camera_server}/models", timeout=30).json()
    digits = next(m for m in listing["models"] if m["name"] == "digits")
    base = f"{camera_server}/models/digits/{digits['version']}/files"
    resp = requests.get(f"{base}/model.tflite", timeout=30)
    assert resp.status_code == 200
    assert hashlib.sha256(resp.content).hexdigest() == digits["sha256"]
    assert resp.headers["x-content-sha256"] == digits["sha256"]
    for bad, code in [
        ("../../digits/1/manifest.json", 404),
        ("manifest.json", 404),  # not one of its listed files
        ("nothing.tflite", 404),
    ]:
        refused = requests.get(f"{base}/{bad}", timeout=30)
        assert refused.status_code == code, bad
        assert refused.json()["error"]["code"] in {"not_found"}
    unknown = requests.get(f"{camera_server}/models/nosuch/1/files/model.tflite", timeout=30)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "unknown_model"
    for version in ("+1", "\u0661", "1.0"):  # a version is ASCII digits, as everywhere else
        odd = requests.get(f"{camera_server}/models/digits/{version}/files/model.tflite")
        assert odd.status_code == 422 and odd.json()["error"]["code"] == "bad_parameter"
    index = requests.get(f"{camera_server}/hand_models", timeout=30).json()
    assert index["available"] == hands.models_available()
    if index["available"]:
        assert index["files"] == hands.MODEL_SHA256
        got = requests.get(f"{camera_server}/hand_models/{index['landmark']}", timeout=30)
        assert hashlib.sha256(got.content).hexdigest() == hands.MODEL_SHA256[index["landmark"]]
    assert requests.get(f"{camera_server}/hand_models/passwd", timeout=30).status_code == 404
    for static in ("camera.js", "device.js", "handpipe.js", "vendor/litertjs/core/index.js"):
        if static.startswith("vendor") and not VENDORED.is_file():
            continue
        resp = requests.get(f"{camera_server}/demo/{static}", timeout=30)
        assert resp.status_code == 200, static
        assert "javascript" in resp.headers["content-type"], static


def test_the_page_makes_hand_features_as_the_server_does(camera_server: str) -> None:
    """handpipe.js's landmark features and gesture-embedder inputs against
    ``handserve.hand_features`` (the landmark model's half of the pipeline, issue 32), on
    random hands of both handedness."""
    hand_features = pytest.importorskip(
        "handserve.hand_features", reason="the hand-feature models are not in this checkout"
    )
    rng = np.random.default_rng(5)
    cases = []
    for handedness in (0.2, 0.8):
        image = rng.random((21, 3)).astype(np.float32)
        image[:, 2] = (rng.random(21) - 0.5) * 0.1
        world = ((rng.random((21, 3)) - 0.5) * 0.1).astype(np.float32)
        record = hand_features.pack(image, world, handedness, WIDTH, HEIGHT)[None]
        hand, _, world_hand = hand_features.embedder_inputs(record)
        cases.append(
            {
                "image": image.tolist(),
                "world": world.tolist(),
                "handedness": handedness,
                "want": {
                    "landmarks": hand_features.landmark_features(record)[0].tolist(),
                    "hand": hand[0].reshape(-1).tolist(),
                    "world_hand": world_hand[0].reshape(-1).tolist(),
                },
            }
        )
    with _demo_page(camera_server) as page:
        got = page.evaluate(
            """async ([cases, w, h]) => {
                const hp = await import('./handpipe.js');
                return cases.map((c) => {
                  const hand = {imageLandmarks: c.image, worldLandmarks: c.world,
                                handedness: c.handedness, imageSize: [w, h]};
                  const e = hp.embedderInputs(hand);
                  return {landmarks: Array.from(hp.landmarkFeatures(hand)),
                          hand: Array.from(e.hand), world_hand: Array.from(e.world_hand)};
                });
            }""",
            [cases, WIDTH, HEIGHT],
        )
    for case, answer in zip(cases, got, strict=True):
        for name, want in case["want"].items():
            np.testing.assert_allclose(answer[name], want, atol=1e-5, err_msg=name)


@needs_vendor
def test_the_browser_finds_the_hands_the_server_finds(camera_server: str) -> None:
    """device.js's palm detection, hand region and landmarks (LiteRT.js on the server's own hand
    models) against handserve.hands on the same real photos: the same 21 points, to a pixel."""
    photos = shared_dir() / "data" / "asl_photos"
    if not hands.models_available():
        pytest.skip("MediaPipe's hand models are not fetched (scripts/fetch-hand-models.sh)")
    if not photos.is_dir():
        pytest.skip(f"{photos} is absent (real hand photos)")
    images = [on_frame(Image.open(photos / name)) for name in HAND_PHOTOS[:4]]
    want = [hands.detector().hands(img) for img in images]
    listing = requests.get(f"{camera_server}/models", timeout=30).json()["models"]
    model = next(m for m in listing if m["name"] == "handcrop")
    with _demo_page(camera_server) as page:
        got = page.evaluate(
            """async ([model, frames, w, h]) => {
                const { DeviceRunner } = await import('./device.js');
                const runner = await DeviceRunner.create('/', model);
                const out = [];
                for (const pixels of frames) {
                  const img = {data: Uint8Array.from(pixels), width: w, height: h, channels: 3};
                  out.push((await runner.hands(img)).map((hand) => hand.landmarks));
                }
                return out;
            }""",
            [model, [np.asarray(img).reshape(-1).tolist() for img in images], WIDTH, HEIGHT],
        )
    found = 0
    for server_hands, browser_hands in zip(want, got, strict=True):
        assert len(browser_hands) == len(server_hands)
        for server_hand, points in zip(server_hands, browser_hands, strict=True):
            np.testing.assert_allclose(np.asarray(points), server_hand.landmarks, atol=1.0)
            found += 1
    assert found >= 3, "the photos should show hands"
