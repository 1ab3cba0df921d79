"""Versions whose contract crops the hand serve real photos cropped: one trained with
``--crop-hands`` on the shared photos, one trained on Sign Language MNIST (which carries the
crop by default). A photo's answer is the model's answer on the crop (and not on the whole
photo); a photo without a hand is a 422 ``no_hand`` counted in the metrics; a 28×28 Sign MNIST
image stays whole.

Needs ``../shared/data`` (skips without it) and MediaPipe's hand models
(``scripts/fetch-hand-models.sh``; skips without them).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from handserve import artifacts, hands
from handserve.images import ImageSpec, decode_image
from service.config import ServiceConfig
from tests.service.helpers import inprocess_client, needs_hand_models

pytestmark = [
    pytest.mark.slow,
    pytest.mark.shared_data,
    needs_hand_models,
]
JPEG, PNG = {"Content-Type": "image/jpeg"}, {"Content-Type": "image/png"}
PHOTOS = ["A/kennethowen_1.jpg", "L/carbonara_2.jpg", "Y/mtritran_1.jpg", "B/davidlee_1.jpg"]


@pytest.fixture(scope="module")
def models_dir(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``photos/1`` (folder, --crop-hands, CNN at 32 px) and ``signs/1`` (Sign MNIST, 1 epoch)."""
    from training.config import TrainConfig
    from training.export import export_run
    from training.train import train

    work = tmp_path_factory.mktemp("hand-crop-serving")
    models = work / "models"
    quick = {"backbone": "cnn", "weights": "none", "epochs": 1, "runs_dir": str(work / "runs")}
    photos = TrainConfig(
        dataset="folder",
        data_dir=str(shared_data / "asl_photos"),
        image_size=32,
        crop_hands=True,
        test_fraction=0.0,
        **quick,  # type: ignore[arg-type]
    )
    export_run(train(photos, verbose=0).run_dir, models, "photos", verify=False)
    signs = TrainConfig(
        dataset="sign_mnist",
        data_dir=str(shared_data / "sign_mnist"),
        limit=600,
        **quick,  # type: ignore[arg-type]
    )
    export_run(train(signs, verbose=0).run_dir, models, "signs", verify=False)
    return models


def _reference(version: Path, pixels: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(version / "model.tflite"))
    interp.allocate_tensors()
    detail = interp.get_input_details()[0]
    if detail["shape"][-1] == 3 and pixels.shape[-1] == 1:  # a grayscale model's RGB file
        pixels = np.repeat(pixels, 3, axis=-1)
    interp.set_tensor(detail["index"], pixels[None].astype(np.float32))
    interp.invoke()
    return interp.get_tensor(interp.get_output_details()[0]["index"])[0]


def test_both_versions_say_crop_in_their_contract(models_dir: Path) -> None:
    for name in ("photos", "signs"):
        assert artifacts.read_manifest(models_dir / name / "1").input.crop == "hand"


@pytest.mark.parametrize("name", ["photos", "signs"])
def test_real_photos_are_served_cropped_to_the_hand(
    name: str, models_dir: Path, shared_data: Path
) -> None:
    version = models_dir / name / "1"
    spec = artifacts.read_manifest(version).input.image_spec
    whole_spec = ImageSpec(spec.height, spec.width, spec.channels)
    cfg = ServiceConfig(models_dir=str(models_dir), runtime="litert")
    with inprocess_client(cfg) as (client, _):
        assert {m["name"]: m["input"]["crop"] for m in client.get("/models").json()["models"]} == {
            "photos": "hand",
            "signs": "hand",
        }
        differs = 0
        for photo in PHOTOS:
            data = (shared_data / "asl_photos" / photo).read_bytes()
            resp = client.post(f"/predict?model={name}&top_k=100", content=data, headers=JPEG)
            assert resp.status_code == 200, resp.text
            got = {p["index"]: p["score"] for p in resp.json()["predictions"]}
            scores = np.array([got[i] for i in range(len(got))])
            cropped = _reference(version, decode_image(data, spec))
            np.testing.assert_allclose(scores, cropped, atol=1e-5)
            whole = _reference(version, decode_image(data, whole_spec))
            differs += not np.allclose(scores, whole, atol=1e-3)
        assert differs == len(PHOTOS)  # the crop changed what the model saw, every time


def test_no_hand_is_a_422_with_its_own_code_counted_in_the_metrics(models_dir: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (640, 480), (200, 200, 200)).save(buf, format="JPEG")
    cfg = ServiceConfig(models_dir=str(models_dir), runtime="litert")
    with inprocess_client(cfg) as (client, svc):
        counter = svc.metrics.rejected_inputs.labels(reason="no_hand")
        before = counter._value.get()
        resp = client.post("/predict?model=photos", content=buf.getvalue(), headers=JPEG)
        assert resp.status_code == 422, resp.text
        assert resp.json()["error"]["code"] == "no_hand"
        assert counter._value.get() == before + 1


def test_a_sign_mnist_sized_crop_is_served_whole(models_dir: Path, shared_data: Path) -> None:
    """The course's inputs (28×28 hand crops) keep working on a version that crops."""
    rng = np.random.default_rng(3)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(buf, format="PNG")
    version = models_dir / "signs" / "1"
    spec = artifacts.read_manifest(version).input.image_spec
    cfg = ServiceConfig(models_dir=str(models_dir), runtime="litert")
    with inprocess_client(cfg) as (client, _):
        resp = client.post("/predict?model=signs&top_k=100", content=buf.getvalue(), headers=PNG)
    assert resp.status_code == 200, resp.text
    got = {p["index"]: p["score"] for p in resp.json()["predictions"]}
    whole = _reference(version, decode_image(buf.getvalue(), ImageSpec(28, 28, 1)))
    np.testing.assert_allclose([got[i] for i in range(len(got))], whole, atol=1e-5)
    assert spec.crop == "hand"


def test_a_server_without_the_hand_models_refuses_such_a_version_saying_why(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(hands.MODELS_ENV, str(tmp_path / "no-models-here"))
    cfg = ServiceConfig(models_dir=str(models_dir), runtime="litert")
    with inprocess_client(cfg) as (client, _):
        refused = {r["name"]: r["reason"] for r in client.get("/models").json()["refused"]}
    assert set(refused) == {"photos", "signs"}
    assert all("fetch-hand-models.sh" in reason for reason in refused.values()), refused
