"""A real ``bentoml serve`` subprocess: the three input forms, batching, metrics, refusals.

Answers are compared with the exported ``model.tflite`` run directly by a LiteRT interpreter on
the same decoded array (the service must add nothing but decoding and batching).
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from handserve import artifacts
from handserve.images import decode_image
from tests.service.helpers import digit_png, metric_samples, total

pytestmark = [pytest.mark.server, pytest.mark.slow]


def direct_scores(version_dir: Path, images: list[bytes]) -> np.ndarray:
    """The exported float32 LiteRT model run directly on the shared decoder's output."""
    from ai_edge_litert.interpreter import Interpreter

    man = artifacts.read_manifest(version_dir)
    x = np.stack([decode_image(b, man.input.image_spec) for b in images]).astype(np.float32)
    interp = Interpreter(model_path=str(version_dir / "model.tflite"))
    idx = interp.get_input_details()[0]["index"]
    interp.resize_tensor_input(idx, list(x.shape))
    interp.allocate_tensors()
    interp.set_tensor(idx, x)
    interp.invoke()
    return interp.get_tensor(interp.get_output_details()[0]["index"])


def image(fmt: str, seed: int = 0) -> bytes:
    """A 40x40 RGB picture (resized and converted to 28x28 grayscale by the service)."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def assert_matches(answer: dict, scores: np.ndarray, labels: list[str], k: int) -> None:
    preds = answer["predictions"]
    assert len(preds) == k
    assert [p["score"] for p in preds] == sorted((p["score"] for p in preds), reverse=True)
    for p in preds:
        assert p["label"] == labels[p["index"]]
        np.testing.assert_allclose(p["score"], scores[p["index"]], atol=1e-5)
    assert preds[0]["index"] == int(np.argmax(scores))


@pytest.fixture(scope="module")
def tiny_dir(server) -> Path:
    return server.models_dir / "tiny" / "1"


@pytest.fixture(scope="module")
def labels(tiny_dir: Path) -> list[str]:
    return artifacts.read_manifest(tiny_dir).labels


def test_readyz_was_503_until_warm_and_livez_answers(server) -> None:
    statuses = [s for _, s in server.readiness]
    assert 503 in statuses, server.readiness  # polled from process start: not ready at first
    assert statuses[-1] == 200
    first_503 = next(t for t, s in server.readiness if s == 503)
    ready_at = next(t for t, s in server.readiness if s == 200)
    assert ready_at - first_503 >= 1.0  # the configured warm-up delay was waited for
    assert requests.get(server.url + "/livez", timeout=5).status_code == 200


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("form", ["multipart", "raw", "json"])
def test_predict_each_form_equals_the_model(server, tiny_dir, labels, form, fmt) -> None:
    data = image(fmt, seed=3)
    mime = f"image/{fmt.lower()}"
    url = server.url + "/predict"
    if form == "multipart":
        resp = requests.post(
            url, files={"image": ("x", data, mime)}, data={"model": "tiny", "top_k": "3"}
        )
    elif form == "raw":
        resp = requests.post(
            url, data=data, headers={"Content-Type": mime}, params={"model": "tiny", "top_k": "3"}
        )
    else:
        resp = requests.post(
            url, json={"image": base64.b64encode(data).decode(), "model": "tiny", "top_k": 3}
        )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["model"], body["version"]) == ("tiny", 1)
    assert_matches(body, direct_scores(tiny_dir, [data])[0], labels, 3)


def test_default_model_and_version(server) -> None:
    # two models are served ("digits" v2 and "tiny" v1); requests that name none go to the
    # configured default, and asking for a served version explicitly works.
    resp = requests.post(
        server.url + "/predict", data=image("PNG"), headers={"Content-Type": "image/png"}
    )
    assert resp.status_code == 200
    assert (resp.json()["model"], resp.json()["version"]) == ("digits", 2)
    resp = requests.post(
        server.url + "/predict?model=digits&version=2",
        data=image("PNG"),
        headers={"Content-Type": "image/png"},
    )
    assert resp.status_code == 200


@pytest.mark.parametrize("form", ["multipart", "json"])
def test_predict_batch_keeps_order(server, tiny_dir, labels, form) -> None:
    images = [image("PNG", seed=i) for i in range(12)]
    if form == "multipart":
        files = [("images", (f"{i}.png", b, "image/png")) for i, b in enumerate(images)]
        resp = requests.post(server.url + "/predict_batch?model=tiny&top_k=10", files=files)
    else:
        payload: dict[str, Any] = {
            "images": [base64.b64encode(b).decode() for b in images],
            "model": "tiny",
            "top_k": 10,
        }
        resp = requests.post(server.url + "/predict_batch", json=payload)
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert len(results) == len(images)
    expected = direct_scores(tiny_dir, images)
    for res, scores in zip(results, expected, strict=True):
        assert_matches(res, scores, labels, 10)


def test_64_concurrent_requests_all_answered_joined_where_it_pays(server, tiny_dir) -> None:
    """LiteRT runs each request at once, and joins those waiting together into one call for a
    model whose batches cost less per image (measured at warm-up, shown in /models): every
    answer is right either way."""
    listed = requests.get(server.url + "/models", timeout=30).json()["models"]
    joins = next(m for m in listed if m["name"] == "tiny")["joins_requests"]
    before = metric_samples(server.url)
    images = [digit_png(i) for i in range(8)]
    expected = direct_scores(tiny_dir, images).argmax(1)

    def call(i: int) -> tuple[int, int]:
        r = requests.post(
            server.url + "/predict?model=tiny", files={"image": images[i % 8]}, timeout=60
        )
        return r.status_code, r.json()["predictions"][0]["index"] if r.ok else -1

    with cf.ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(call, range(64 * 3)))
    assert [code for code, _ in answers] == [200] * len(answers)
    assert [index for _, index in answers] == [expected[i % 8] for i in range(len(answers))]
    after = metric_samples(server.url)

    def delta(name: str) -> float:
        return total(after, name, model="tiny") - total(before, name, model="tiny")

    assert delta("handserve_batch_size_sum") == len(answers)  # every image ran once
    calls = delta("handserve_batch_size_count")
    assert calls <= len(answers)
    if joins:  # 64 clients on 2 workers: requests queue, and are joined (the other worker
        # measured its own warm-up, so without joins here it may still join)
        assert calls < len(answers)


BAD_INPUTS = [
    # (name, request kwargs, expected status, expected code)
    (
        "not_an_image",
        {"data": b"hello, not an image", "headers": {"Content-Type": "image/png"}},
        400,
        "not_an_image",
    ),
    (
        "truncated",
        {"data": digit_png(1)[:60], "headers": {"Content-Type": "image/png"}},
        400,
        "truncated",
    ),
    ("empty", {"data": b"", "headers": {"Content-Type": "image/png"}}, 400, "empty"),
    ("bomb", {"data": None, "headers": {"Content-Type": "image/png"}}, 413, "too_many_pixels"),
    (
        "too_large",
        {"data": b"\0" * (10 * 1024 * 1024 + 1), "headers": {"Content-Type": "image/png"}},
        413,
        "body_too_large",
    ),
    ("unknown_model", {"params": {"model": "nope"}}, 404, "unknown_model"),
    ("refused_model", {"params": {"model": "broken"}}, 404, "unknown_model"),
    ("unknown_version", {"params": {"model": "tiny", "version": "9"}}, 404, "unknown_version"),
    ("bad_top_k", {"params": {"top_k": "zero"}}, 422, "bad_parameter"),
    ("negative_top_k", {"params": {"top_k": "-1"}}, 422, "bad_parameter"),
    ("unknown_query", {"params": {"colour": "red"}}, 422, "unknown_field"),
    ("unknown_json", {"json": {"image": "", "extra": 1}}, 422, "unknown_field"),
    ("bad_base64", {"json": {"image": "@@@"}}, 400, "bad_base64"),
    (
        "bad_json",
        {"data": b"{nope", "headers": {"Content-Type": "application/json"}},
        400,
        "bad_json",
    ),
    (
        "bad_media_type",
        {"data": b"x", "headers": {"Content-Type": "text/plain"}},
        415,
        "unsupported_media_type",
    ),
]


def bomb_png() -> bytes:
    """A 1-bit 20000x20000 PNG: a few kB on the wire, 400 megapixels decoded."""
    buf = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("name", "kwargs", "status", "code"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS]
)
def test_bad_input_gets_json_error_and_server_keeps_serving(server, name, kwargs, status, code):
    before = metric_samples(server.url)
    kwargs = dict(kwargs)
    if name == "bomb":
        kwargs["data"] = bomb_png()
    if "data" not in kwargs and "json" not in kwargs:
        kwargs.update(data=digit_png(2), headers={"Content-Type": "image/png"})
    resp = requests.post(server.url + "/predict", timeout=30, **kwargs)
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["code"] == code and isinstance(err["message"], str) and err["message"]
    after = metric_samples(server.url)
    assert (
        total(after, "handserve_rejected_inputs_total", reason=code)
        == total(before, "handserve_rejected_inputs_total", reason=code) + 1
    )
    good = requests.post(server.url + "/predict?model=tiny", files={"image": digit_png(3)})
    assert good.status_code == 200


def test_corrupted_model_is_refused_others_serve(server) -> None:
    body = requests.get(server.url + "/models", timeout=10).json()
    served = {m["name"]: m for m in body["models"]}
    assert set(served) == {"tiny", "digits"}
    refused = {r["name"]: r for r in body["refused"]}
    assert "sha256" in refused["broken"]["reason"]
    tiny = served["tiny"]
    assert tiny["version"] == 1 and tiny["runtime"] == "litert"
    assert tiny["input"]["height"] == 28 and len(tiny["labels"]) == 10
    log = server.log.read_text(errors="replace")
    assert "refusing model broken/1" in log


def test_metrics_count_what_was_sent(server) -> None:
    before = metric_samples(server.url)
    n = 7
    files = [("images", (f"{i}.png", digit_png(i), "image/png")) for i in range(n)]
    assert requests.post(server.url + "/predict_batch?model=tiny", files=files).status_code == 200
    after = metric_samples(server.url)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("handserve_predictions_total", model="tiny", version="1") == n
    assert delta("handserve_preprocess_seconds_count") == n
    assert delta("handserve_batch_wait_seconds_count") == n
    assert delta("handserve_batch_size_sum", model="tiny") == n
    assert delta("handserve_inference_seconds_count", model="tiny", runtime="litert") >= 1
    info = [s for s in after["handserve_model_info"] if s.labels["name"] == "tiny"]
    assert len(info) == 1 and info[0].value == 1 and len(info[0].labels["sha256"]) == 64
    assert "bentoml_service_request_total" in after or any(k.startswith("bentoml_") for k in after)


def test_docs_and_demo_are_served(server) -> None:
    spec = requests.get(server.url + "/docs.json", timeout=10)
    assert spec.status_code == 200
    paths = spec.json()["paths"]
    # The public routes are in BentoML's OpenAPI document, with all three body forms.
    body = paths["/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json", "image/png"} <= set(body)
    assert "/predict_batch" in paths and "/models" in paths
    assert {p["name"] for p in paths["/predict"]["post"]["parameters"]} >= {"model", "top_k"}
    assert requests.get(server.url + "/", timeout=10).status_code == 200
    resp = requests.get(server.url + "/demo", timeout=10)  # redirects to /demo/
    assert resp.status_code == 200 and "<html" in resp.text.lower()


def test_no_servable_model_stays_unready_but_alive(server, tmp_path: Path) -> None:
    import shutil
    import time

    from tests.service.helpers import running_server

    models = tmp_path / "models"
    shutil.copytree(server.models_dir / "broken", models / "broken")
    with running_server(models, tmp_path, {"HANDSERVE_RUNTIME": "litert"}) as (url, proc, _):
        deadline = time.monotonic() + 120
        refused: list = []
        while time.monotonic() < deadline and not refused:
            assert proc.poll() is None
            try:
                if requests.get(url + "/livez", timeout=2).status_code == 200:
                    refused = requests.get(url + "/models", timeout=2).json()["refused"]
            except requests.RequestException:
                pass
            time.sleep(0.2)
        assert [r["name"] for r in refused] == ["broken"]
        time.sleep(0.5)
        ready = requests.get(url + "/readyz", timeout=5)
        assert ready.status_code == 503  # BentoML's answer, in the service's error shape
        assert ready.json()["error"]["code"] == "not_ready"
        resp = requests.post(
            url + "/predict", data=digit_png(1), headers={"Content-Type": "image/png"}, timeout=5
        )
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "not_ready"
