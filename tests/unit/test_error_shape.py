"""service.errors.JSONErrors: one error shape, whatever answered (a stand-in app, no model)."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from service.errors import REFUSAL_KEY, ApiError, JSONErrors


async def typed_refusal(request: Request) -> Response:  # BentoML's shape for a typed API
    return JSONResponse({"error": "unknown_model: model 'nope' is not served"}, status_code=404)


async def validation(request: Request) -> Response:  # BentoML's own validation, no code
    return JSONResponse({"error": "top_k: Input should be greater than 0"}, status_code=400)


async def plain(request: Request) -> Response:
    return PlainTextResponse("Service Unavailable", status_code=503)


async def ours(request: Request) -> Response:
    return JSONResponse({"error": {"code": "bad_json", "message": "m"}}, status_code=400)


async def v2(request: Request) -> Response:
    return JSONResponse({"error": "model 'nope' is not served"}, status_code=404)


async def chunked(request: Request) -> Response:
    async def parts():  # type: ignore[no-untyped-def]
        yield b'{"error": "bad_request: '
        yield b'in two parts"}'

    return StreamingResponse(parts(), status_code=400, media_type="application/json")


async def typed_overloaded(request: Request) -> Response:
    """A typed endpoint's refusal: BentoML answers a 5xx with a generic message, the service
    left the real refusal in the request's state."""
    refusal = ApiError("overloaded", "at capacity; retry later", headers={"Retry-After": "3"})
    setattr(request.state, REFUSAL_KEY, refusal)
    generic = {"error": "An unexpected error has occurred, please check the server log."}
    return JSONResponse(generic, status_code=503)


async def fine(request: Request) -> Response:
    return JSONResponse({"error": "a 200 is not an error"})


APP = Starlette(
    routes=[
        Route("/classify", typed_refusal, methods=["POST"]),
        Route("/classify_batch", validation, methods=["POST"]),
        Route("/readyz", plain),
        Route("/predict", ours, methods=["POST"]),
        Route("/v2/models/nope/infer", v2, methods=["POST"]),
        Route("/chunked", chunked),
        Route("/fine", fine),
        Route("/classify_busy", typed_overloaded, methods=["POST"]),
    ]
)


@pytest.mark.parametrize(
    ("method", "path", "status", "code", "message"),
    [
        ("POST", "/classify", 404, "unknown_model", "model 'nope' is not served"),
        ("POST", "/classify_batch", 400, "bad_request", "top_k: Input should be greater than 0"),
        ("GET", "/readyz", 503, "not_ready", "the server is not ready"),
        ("POST", "/predict", 400, "bad_json", "m"),
        ("GET", "/chunked", 400, "bad_request", "in two parts"),
        ("GET", "/nowhere", 404, "not_found", "GET /nowhere: not found"),
    ],
)
def test_every_error_outside_v2_has_the_image_api_shape(
    method: str, path: str, status: int, code: str, message: str
) -> None:
    with TestClient(JSONErrors(APP)) as client:
        resp = client.request(method, path)
    assert resp.status_code == status
    assert resp.headers["content-type"] == "application/json"
    assert int(resp.headers["content-length"]) == len(resp.content)
    error = resp.json()["error"]
    assert error["code"] == code and error["message"].startswith(message)


def test_the_open_inference_protocol_keeps_its_shape_and_successes_pass() -> None:
    with TestClient(JSONErrors(APP)) as client:
        resp = client.post("/v2/models/nope/infer")
        assert resp.status_code == 404 and resp.json() == {"error": "model 'nope' is not served"}
        resp = client.get("/fine")
        assert resp.status_code == 200 and resp.json() == {"error": "a 200 is not an error"}


def test_a_typed_endpoints_refusal_is_answered_as_predict_would_with_its_headers() -> None:
    with TestClient(JSONErrors(APP)) as client:
        resp = client.post("/classify_busy")
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "3"
    assert resp.json() == {"error": {"code": "overloaded", "message": "at capacity; retry later"}}
