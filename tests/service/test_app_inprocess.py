"""The runtimes and the service's routes in-process (no server), for both runtimes.

Each runtime must give the exported model's answer for the shared decoder's output; the app
must answer the three input forms and every refusal as JSON. The service class is built as
BentoML builds it, with a test config, and its FastAPI app is driven with Starlette's
TestClient; the real ``bentoml serve`` is tested in test_server.py.
"""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from handserve import artifacts
from handserve.artifacts import ArtifactError
from handserve.images import decode_image
from handserve.runtimes import choose_runtime_name, gpu_visible, open_runtime
from service.config import ServiceConfig
from service.registry import ModelRegistry
from tests.service.helpers import corrupt, digit_png, inprocess_client

pytestmark = pytest.mark.slow
RUNTIMES = ["litert", "savedmodel"]


def reference(version_dir: Path, x: np.ndarray, file: str = "model.tflite") -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(version_dir / file))
    idx = interp.get_input_details()[0]["index"]
    interp.resize_tensor_input(idx, list(x.shape))
    interp.allocate_tensors()
    interp.set_tensor(idx, x.astype(np.float32))
    interp.invoke()
    return interp.get_tensor(interp.get_output_details()[0]["index"])


@pytest.fixture(scope="module")
def models_dir(tiny_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("inproc") / "models"
    shutil.copytree(tiny_export, root / "tiny" / "1")
    return root


@pytest.fixture(scope="module")
def batch(models_dir: Path) -> np.ndarray:
    man = artifacts.read_manifest(models_dir / "tiny" / "1")
    return np.stack([decode_image(digit_png(i), man.input.image_spec) for i in range(5)])


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_runtime_equals_exported_model(models_dir: Path, batch: np.ndarray, runtime: str):
    vdir = models_dir / "tiny" / "1"
    man = artifacts.load_verified(vdir)
    rt = open_runtime(vdir, man, runtime=runtime, instances=2)
    assert rt.name == runtime
    want = reference(vdir, batch)
    np.testing.assert_allclose(rt.predict(batch), want, atol=1e-5)
    np.testing.assert_allclose(rt.predict(batch[:1]), want[:1], atol=1e-5)
    big = np.concatenate([batch] * 14)  # 70 images > one call's 64: split, the last padded
    np.testing.assert_allclose(rt.predict(big), np.concatenate([want] * 14), atol=1e-5)


def test_int8_runtime_quantizes_input(models_dir: Path, batch: np.ndarray) -> None:
    vdir = models_dir / "tiny" / "1"
    man = artifacts.load_verified(vdir)
    rt = open_runtime(vdir, man, runtime="litert", litert_file="model_int8.tflite")
    out = rt.predict(batch)
    assert out.shape == (5, man.num_classes) and out.dtype == np.float32
    want = reference(vdir, batch)
    # quantized: close to float32, not equal (export measured max |diff| ~0.002 on this model)
    np.testing.assert_allclose(out, want, atol=0.02)


def test_runtime_refuses_shape_mismatch_and_unlisted_file(models_dir: Path, tmp_path: Path):
    vdir = models_dir / "tiny" / "1"
    man = artifacts.load_verified(vdir)
    data = man.to_dict()
    data["input"].update(height=32, width=32)
    with pytest.raises(ArtifactError, match="input shape"):
        open_runtime(vdir, artifacts.Manifest.from_dict(data), runtime="litert")
    with pytest.raises(ArtifactError, match="checksum"):
        open_runtime(vdir, man, runtime="litert", litert_file="other.tflite")


def test_auto_runtime_is_litert_without_gpu() -> None:
    if gpu_visible():
        pytest.skip("a GPU is visible here")
    assert choose_runtime_name("auto") == "litert"
    assert choose_runtime_name("savedmodel") == "savedmodel"


def test_registry_refuses_corrupted_model_and_serves_the_rest(models_dir, tmp_path) -> None:
    root = tmp_path / "models"
    shutil.copytree(models_dir, root)
    bad = root / "bad" / "1"
    shutil.copytree(models_dir / "tiny" / "1", bad)
    data = artifacts.read_manifest(bad).to_dict()
    data["name"] = "bad"
    artifacts.write_manifest(bad, artifacts.Manifest.from_dict(data))
    corrupt(bad, "labels.txt")
    reg = ModelRegistry(
        ServiceConfig(models_dir=str(root), runtime="litert", versions={"ghost": 1})
    )
    reg.load_all()
    assert set(reg.models) == {"tiny"}
    reasons = {r.name: r.reason for r in reg.refused}
    assert "sha256" in reasons["bad"] and "absent" in reasons["ghost"]
    assert reg.describe()["refused"][0]["reason"]


@pytest.fixture(scope="module", params=RUNTIMES)
def client(request, models_dir: Path):
    cfg = ServiceConfig(
        models_dir=str(models_dir),
        runtime=request.param,
        max_body_bytes=50_000,
        max_batch_images=4,
        warmup_batches=1,
    )
    with inprocess_client(cfg) as (c, _):
        yield c


def test_app_three_forms_agree(client: TestClient, models_dir: Path) -> None:
    data = digit_png(11)
    x = decode_image(data, artifacts.read_manifest(models_dir / "tiny" / "1").input.image_spec)
    want = reference(models_dir / "tiny" / "1", x[None])[0]
    answers = [
        client.post(
            "/predict", files={"image": ("a.png", data, "image/png")}, data={"top_k": "10"}
        ),
        client.post("/predict?top_k=10", content=data, headers={"Content-Type": "image/png"}),
        client.post("/predict", json={"image": base64.b64encode(data).decode(), "top_k": 10}),
    ]
    for resp in answers:
        assert resp.status_code == 200, resp.text
        got = {p["index"]: p["score"] for p in resp.json()["predictions"]}
        np.testing.assert_allclose([got[i] for i in range(10)], want, atol=1e-5)


def test_app_batch_limits_and_errors(client: TestClient) -> None:
    imgs = [base64.b64encode(digit_png(i)).decode() for i in range(5)]
    resp = client.post("/predict_batch", json={"images": imgs})
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "too_many_images"
    resp = client.post("/predict_batch", json={"images": imgs[:3]})
    assert resp.status_code == 200 and len(resp.json()["results"]) == 3
    resp = client.post("/predict", content=b"\0" * 60_000, headers={"Content-Type": "image/png"})
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "body_too_large"
    files = [
        ("a", ("a.png", digit_png(1), "image/png")),
        ("b", ("b.png", digit_png(2), "image/png")),
    ]
    resp = client.post("/predict", files=files)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "bad_request"
    resp = client.post("/predict", files={"image": ("a.png", b"", "image/png")})
    assert resp.json()["error"]["code"] == "empty"
    resp = client.post("/predict", data={"model": "tiny"}, files={"x": ("a", b"zz", "image/png")})
    assert resp.json()["error"]["code"] == "not_an_image"
    assert client.get("/models").json()["models"][0]["name"] == "tiny"
    resp = client.get("/predict")
    assert resp.status_code == 405 and resp.json()["error"]["code"] == "method_not_allowed"


def test_app_not_ready_answers_503(models_dir: Path) -> None:
    cfg = ServiceConfig(models_dir=str(models_dir))
    with inprocess_client(cfg, load=False) as (c, _):
        resp = c.post("/predict", content=digit_png(1), headers={"Content-Type": "image/png"})
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "1"
    assert resp.json()["error"]["code"] == "not_ready"


def test_app_refuses_beyond_capacity_with_retry_after(models_dir: Path) -> None:
    cfg = ServiceConfig(
        models_dir=str(models_dir),
        runtime="litert",
        max_inflight_images=4,
        max_batch_images=4,
        retry_after_s=3,
        warmup_batches=0,
    )
    imgs = [base64.b64encode(digit_png(i)).decode() for i in range(3)]
    with inprocess_client(cfg) as (c, svc):
        svc.plane.admission.acquire(2)  # two images of another request still in flight
        resp = c.post("/predict_batch", json={"images": imgs})
        assert resp.status_code == 503 and resp.headers["Retry-After"] == "3"
        assert resp.json()["error"]["code"] == "overloaded"
        svc.plane.admission.release(2)
        assert c.post("/predict_batch", json={"images": imgs}).status_code == 200


def test_a_request_is_bounded_by_the_pixels_it_would_decode(models_dir: Path) -> None:
    """Declared pixels, summed over a request's images, are checked before decoding (413), and
    admission counts them: a worker holding big work refuses more with 503."""
    cfg = ServiceConfig(
        models_dir=str(models_dir),
        runtime="litert",
        max_request_pixels=3 * 500 * 500,
        max_inflight_pixels=4 * 500 * 500,
        warmup_batches=0,
    )
    big = digit_png(0, size=500)
    with inprocess_client(cfg) as (c, svc):
        files = [("files", (f"{i}.png", big, "image/png")) for i in range(4)]
        resp = c.post("/predict_batch", files=files)
        assert resp.status_code == 413, resp.text
        error = resp.json()["error"]
        assert error["code"] == "too_many_request_pixels"
        assert "1,000,000 pixels" in error["message"] and "750,000" in error["message"]
        assert c.post("/predict_batch", files=files[:3]).status_code == 200
        svc.plane.admission.acquire(1, 2 * 500 * 500)  # another request's two big images
        resp = c.post("/predict_batch", files=files[:3])
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "overloaded"
        svc.plane.admission.release(1, 2 * 500 * 500)
        assert svc.plane.admission.inflight_pixels == 0


def test_a_bad_image_in_a_split_batch_is_named(models_dir: Path) -> None:
    """A long /predict_batch runs in parts on threads; a bad image still gets its 400."""
    from service.inference import InlineLimits, ParallelEngine

    cfg = ServiceConfig(models_dir=str(models_dir), runtime="litert", warmup_batches=0)
    imgs = [base64.b64encode(digit_png(i)).decode() for i in range(4)]
    imgs[2] = base64.b64encode(b"not an image").decode()
    with inprocess_client(cfg) as (c, svc):
        svc.plane.engine = ParallelEngine(cfg.max_pixels, None, inline=InlineLimits(0, 0))
        resp = c.post("/predict_batch", json={"images": imgs})
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["message"].startswith("image 2:")
        good = [imgs[0], imgs[1], imgs[3]]
        resp = c.post("/predict_batch", json={"images": good})
        assert resp.status_code == 200 and len(resp.json()["results"]) == 3
