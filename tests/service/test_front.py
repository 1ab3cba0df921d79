"""The image API's short path (service.front.Front) answers exactly as the FastAPI route does.

A server answers ``POST /predict`` and ``/predict_batch`` one layer before BentoML's router and
FastAPI (service/front.py), with the route's own front end. Every answer it gives, refusals
included, must be the one the route gives: the same status, body and headers, and the same
refusals counted. Each request below is sent to the app without the layer and with it.
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from starlette.middleware.cors import CORSMiddleware
from starlette.testclient import TestClient

from service import errors
from service.config import ServiceConfig
from tests.service.helpers import digit_png, inprocess_client

PNG = {"Content-Type": "image/png"}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


#: name -> (path, keyword arguments of TestClient.post)
REQUESTS: dict[str, tuple[str, dict[str, Any]]] = {
    "raw": ("/predict?top_k=3", {"content": digit_png(1), "headers": PNG}),
    "multipart": ("/predict", {"files": {"image": ("a.png", digit_png(2), "image/png")}}),
    "json": ("/predict", {"json": {"image": _b64(digit_png(3)), "top_k": 2}}),
    "batch": ("/predict_batch", {"json": {"images": [_b64(digit_png(i)) for i in range(3)]}}),
    "not an image": ("/predict", {"content": b"hello", "headers": PNG}),
    "bad image in a batch": ("/predict_batch", {"json": {"images": [_b64(digit_png(1)), "aGk="]}}),
    "unknown model": ("/predict?model=nope", {"content": digit_png(1), "headers": PNG}),
    "bad parameter": ("/predict?top_k=zero", {"content": digit_png(1), "headers": PNG}),
    "unknown field": ("/predict", {"json": {"image": _b64(digit_png(1)), "colour": 1}}),
    "text body": ("/predict", {"content": b"x", "headers": {"Content-Type": "text/plain"}}),
    "empty": ("/predict", {"content": b"", "headers": PNG}),
    "too large": ("/predict", {"content": b"\0" * 60_000, "headers": PNG}),
    "too many images": (
        "/predict_batch",
        {"json": {"images": [_b64(digit_png(i)) for i in range(5)]}},
    ),
    "bad JSON": ("/predict", {"content": b"{", "headers": {"Content-Type": "application/json"}}),
}


@pytest.fixture(scope="module")
def cfg(tiny_export: Path, tmp_path_factory: pytest.TempPathFactory) -> ServiceConfig:
    root = tmp_path_factory.mktemp("front") / "models"
    shutil.copytree(tiny_export, root / "tiny" / "1")
    return ServiceConfig(
        models_dir=str(root),
        runtime="litert",
        max_body_bytes=50_000,
        max_batch_images=4,
        warmup_batches=0,
    )


def _answers(cfg: ServiceConfig, *, front: bool) -> tuple[dict[str, Any], list[Any]]:
    with inprocess_client(cfg, front=front) as (client, svc):
        got = {}
        for name, (path, kwargs) in REQUESTS.items():
            resp = client.post(path, **kwargs)
            got[name] = (
                resp.status_code,
                resp.json(),
                resp.headers["content-type"],
                resp.headers.get("retry-after"),
            )
        rejected = sorted(
            (s.labels["reason"], s.value)
            for m in svc.metrics.rejected_inputs.collect()
            for s in m.samples
            if s.name.endswith("_total")
        )
    return got, rejected


def test_the_short_path_answers_as_the_route(
    cfg: ServiceConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    route, route_rejected = _answers(cfg, front=False)
    long_way: list[str] = []
    original: Callable[..., Any] = errors.JSONErrors.__call__

    async def counted(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            long_way.append(scope["path"])
        await original(self, scope, receive, send)

    monkeypatch.setattr(errors.JSONErrors, "__call__", counted)
    short, short_rejected = _answers(cfg, front=True)
    assert long_way == []  # every request above took the short path
    assert short == route
    assert short_rejected == route_rejected
    # and the answers are what the API promises, not merely equal
    assert short["raw"][0] == 200 and len(short["raw"][1]["predictions"]) == 3
    assert short["batch"][0] == 200 and len(short["batch"][1]["results"]) == 3
    assert short["bad image in a batch"][1]["error"]["message"].startswith("image 1: ")
    codes = {name: body["error"]["code"] for name, (s, body, *_) in short.items() if s != 200}
    assert codes == {
        "not an image": "not_an_image",
        "bad image in a batch": "not_an_image",
        "unknown model": "unknown_model",
        "bad parameter": "bad_parameter",
        "unknown field": "unknown_field",
        "text body": "unsupported_media_type",
        "empty": "empty",
        "too large": "body_too_large",
        "too many images": "too_many_images",
        "bad JSON": "bad_json",
    }


def test_other_requests_take_the_long_way(cfg: ServiceConfig) -> None:
    """Everything but the image API's POSTs goes through the error-shape middleware and the
    app: a wrong method, an unknown path, the model list."""
    with inprocess_client(cfg) as (client, _):
        resp = client.get("/predict")
        assert resp.status_code == 405 and resp.json()["error"]["code"] == "method_not_allowed"
        resp = client.post("/predictions", content=digit_png(1), headers=PNG)
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
        assert client.get("/models").json()["models"][0]["name"] == "tiny"


def test_a_server_still_loading_refuses_on_the_short_path(cfg: ServiceConfig) -> None:
    with inprocess_client(cfg, load=False) as (client, _):
        resp = client.post("/predict", content=digit_png(1), headers=PNG)
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "1"
    assert resp.json()["error"]["code"] == "not_ready"


def test_with_cors_every_request_takes_the_long_way(cfg: ServiceConfig) -> None:
    """BentoML's CORS middleware (when a user turns it on) sits inside the layer: the short
    path would skip its headers, so it is off."""
    from prometheus_client import CollectorRegistry

    from service.front import Front
    from service.service import HandServe, app

    svc = HandServe.inner(cfg, CollectorRegistry())
    cors = CORSMiddleware(app, allow_origins=["https://example.com"], allow_methods=["*"])
    front = Front(cors, service=lambda: svc, timeout_s=cfg.timeout_s)
    assert not front.short
    with TestClient(front) as client:
        client.portal.call(svc.start)
        client.portal.call(svc.loaded)
        headers = {**PNG, "Origin": "https://example.com"}
        resp = client.post("/predict", content=digit_png(1), headers=headers)
        client.portal.call(svc.stop)
    assert resp.status_code == 200
    assert resp.headers["access-control-allow-origin"] == "https://example.com"
