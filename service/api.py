"""The public HTTP API as a FastAPI app: parse the three input forms, refuse bad input.

``/predict`` and ``/predict_batch`` accept an image as multipart file(s), as a raw body with an
``image/*`` content type, or as JSON with base64. Parsing, limits and error answers live here;
images go to a :class:`Backend` whose ``infer`` joins them into adaptive batches (BentoML's
dispatcher in the service, a direct call in in-process tests). Nothing here imports BentoML,
so the app can be tested in-process with ``httpx.ASGITransport``.

The handlers take the raw ``Request`` (one route accepts three body forms, and every refusal must
be our JSON error, not FastAPI's validation format); FastAPI is used for its OpenAPI document,
which BentoML merges into the service's ``/docs.json`` and Swagger page. The schema is written
out in :data:`OPENAPI` below.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import anyio
import numpy as np
from fastapi import FastAPI
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.staticfiles import StaticFiles

from handserve.images import ImageDecodeError, decode_image
from service.errors import STATUS, ApiError, is_input_error
from service.registry import LoadedModel, ModelRegistry, Pending, top_k

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
PARAMS = ("model", "version", "top_k")
#: Requests with fewer encoded bytes than this are decoded on the event loop: a small PNG
#: decodes in tens of microseconds, less than a thread hand-off costs; big photos go to a thread
#: so they cannot stall other requests.
INLINE_DECODE_BYTES = 32 * 1024
#: ... and only when the headers promise at most this many pixels in all: a few kilobytes of PNG
#: can hold a 6000x6000 flat image whose decode would stall every other request.
INLINE_DECODE_PIXELS = 256 * 256


def decode_inline(blobs: list[bytes]) -> bool:
    """Whether decoding ``blobs`` on the event loop is cheap: few bytes and few pixels."""
    if sum(len(b) for b in blobs) > INLINE_DECODE_BYTES:
        return False
    pixels = 0
    for blob in blobs:
        try:  # Image.open reads the header only; bad data fails fast in the real decode
            with Image.open(io.BytesIO(blob)) as img:
                pixels += img.size[0] * img.size[1]
        except Exception:
            continue
    return pixels <= INLINE_DECODE_PIXELS


class Backend(Protocol):
    """What the HTTP front needs from the process that holds the models."""

    registry: ModelRegistry
    metrics: Any

    async def infer(self, items: list[Pending]) -> None:
        """Fill ``item.scores`` for every item (raises ApiError on overload)."""
        ...


# --------------------------------------------------------------------------- parsing
def parse_params(raw: dict[str, Any], *, default_top_k: int) -> tuple[str | None, int | None, int]:
    """Validate ``model``, ``version`` and ``top_k`` from query, form or JSON (strings or ints)."""
    model = raw.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise ApiError("bad_parameter", "model must be a non-empty string")
    version = _int_param(raw, "version")
    k = _int_param(raw, "top_k")
    if version is not None and version < 1:
        raise ApiError("bad_parameter", f"version must be a positive integer, got {version}")
    if k is not None and k < 1:
        raise ApiError("bad_parameter", f"top_k must be a positive integer, got {k}")
    return model or None, version, default_top_k if k is None else k


def _int_param(raw: dict[str, Any], key: str) -> int | None:
    value = raw.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ApiError("bad_parameter", f"{key} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value)
    raise ApiError("bad_parameter", f"{key} must be an integer, got {value!r}")


def check_unknown(keys: Any, allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(keys) - set(allowed))
    if unknown:
        raise ApiError(
            "unknown_field",
            f"unknown {where} field(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}",
        )


def b64decode(value: Any, index: int | None = None) -> bytes:
    where = "image" if index is None else f"images[{index}]"
    if not isinstance(value, str):
        raise ApiError("bad_base64", f"{where} must be a base64 string")
    if value.startswith("data:") and "," in value:  # a data URL from a browser canvas
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError("bad_base64", f"{where} is not valid base64: {exc}") from exc


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing more than ``limit`` bytes by header and by counting while reading."""
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError as exc:
            raise ApiError("bad_request", "Content-Length is not a number") from exc
        if declared > limit:
            raise ApiError(
                "body_too_large", f"the body is {declared:,} bytes, over the limit of {limit:,}"
            )
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError("body_too_large", f"the body is over the limit of {limit:,} bytes")
            chunks.append(chunk)
    except ClientDisconnect as exc:
        raise ApiError("bad_request", "the client disconnected while sending") from exc
    body = b"".join(chunks)
    request._body = body  # later request.form()/json() reuse it instead of reading again
    return body


async def parse_request(
    request: Request, *, batch: bool, max_body_bytes: int, default_top_k: int
) -> tuple[list[bytes], str | None, int | None, int]:
    """The encoded images and parameters of a predict request, in any of the three forms."""
    body = await read_body(request, max_body_bytes)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    params: dict[str, Any] = dict(request.query_params)
    check_unknown(params, PARAMS, "query")
    images: list[bytes] = []
    if ctype == "multipart/form-data":
        try:
            form = await request.form(max_files=10_000, max_fields=1_000)
        except Exception as exc:  # malformed multipart: starlette raises several types
            raise ApiError("bad_request", f"malformed multipart body: {exc}") from exc
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                images.append(await value.read())
            elif key in PARAMS:
                params[key] = value
            else:
                check_unknown([key], PARAMS, "form")
    elif ctype == "application/json":
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiError("bad_json", f"the body is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ApiError("bad_json", "the JSON body must be an object")
        key = "images" if batch else "image"
        check_unknown(data, (key, *PARAMS), "JSON")
        if key not in data:
            raise ApiError("bad_request", f"the JSON body has no {key!r} field")
        if batch:
            if not isinstance(data[key], list):
                raise ApiError("bad_request", "images must be a list of base64 strings")
            images = [b64decode(v, i) for i, v in enumerate(data[key])]
        else:
            images = [b64decode(data[key])]
        params.update({k: data[k] for k in PARAMS if k in data})
    elif ctype.startswith("image/") or ctype == "application/octet-stream":
        images = [body]
    elif not body:
        raise ApiError("empty", "the request has no body; send an image")
    else:
        raise ApiError(
            "unsupported_media_type",
            f"Content-Type {ctype or 'none'!r} is not supported; use multipart/form-data, "
            "image/*, application/octet-stream or application/json",
        )
    model, version, k = parse_params(params, default_top_k=default_top_k)
    if not images:
        raise ApiError("empty", "the request contains no image")
    if not batch and len(images) > 1:
        raise ApiError("bad_request", f"/predict takes one image, got {len(images)}")
    return images, model, version, k


# --------------------------------------------------------------------------- app
# --------------------------------------------------------------------------- OpenAPI
_PARAMS_DOC = [
    {
        "name": "model",
        "in": "query",
        "required": False,
        "schema": {"type": "string"},
        "description": "model name (default: the configured default model)",
    },
    {
        "name": "version",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1},
        "description": "model version (default: the latest loaded)",
    },
    {
        "name": "top_k",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1},
        "description": "how many classes to return, best first",
    },
]
_PREDICTION = {
    "type": "object",
    "properties": {
        "label": {"type": "string"},
        "index": {"type": "integer"},
        "score": {"type": "number"},
    },
}
_PREDICTIONS = {"type": "array", "items": _PREDICTION}
_ERROR = {
    "description": 'refused input, as {"error": {"code", "message"}}',
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "error": {
                        "type": "object",
                        "properties": {
                            "code": {"type": "string"},
                            "message": {"type": "string"},
                        },
                    }
                },
            }
        }
    },
}


def _error_responses() -> dict[str, Any]:
    """One OpenAPI response per status the API can refuse with, listing its error codes."""
    by_status: dict[int, list[str]] = {}
    for code, status in sorted(STATUS.items()):
        by_status.setdefault(status, []).append(code)
    return {
        str(status): {**_ERROR, "description": "error codes: " + ", ".join(codes)}
        for status, codes in sorted(by_status.items())
    }


_ERRORS = _error_responses()


def _body(batch: bool) -> dict[str, Any]:
    file_field = {"type": "string", "format": "binary"}
    multipart = {
        "type": "object",
        "properties": {
            ("files" if batch else "file"): (
                {"type": "array", "items": file_field} if batch else file_field
            ),
            "model": {"type": "string"},
            "version": {"type": "integer"},
            "top_k": {"type": "integer"},
        },
    }
    key = "images" if batch else "image"
    b64 = {"type": "string", "format": "byte", "description": "base64 (a data: URL works too)"}
    json_body = {
        "type": "object",
        "required": [key],
        "properties": {
            key: {"type": "array", "items": b64} if batch else b64,
            "model": {"type": "string"},
            "version": {"type": "integer"},
            "top_k": {"type": "integer"},
        },
    }
    content: dict[str, Any] = {
        "multipart/form-data": {"schema": multipart},
        "application/json": {"schema": json_body},
    }
    if not batch:
        raw = {"schema": {"type": "string", "format": "binary"}}
        content.update({"image/png": raw, "image/jpeg": raw, "application/octet-stream": raw})
    return {"required": True, "content": content}


def _ok(schema: dict[str, Any]) -> dict[str, Any]:
    return {"200": {"description": "OK", "content": {"application/json": {"schema": schema}}}}


_HEAD = {"model": {"type": "string"}, "version": {"type": "integer"}}
#: The public routes' OpenAPI entries (FastAPI cannot infer them from ``request: Request``).
OPENAPI: dict[str, dict[str, Any]] = {
    "predict": {
        "summary": "Classify one image",
        "description": "One image as a multipart file, a raw image/* body, or JSON base64.",
        "openapi_extra": {
            "parameters": _PARAMS_DOC,
            "requestBody": _body(batch=False),
            "responses": {
                **_ok({"type": "object", "properties": {**_HEAD, "predictions": _PREDICTIONS}}),
                **_ERRORS,
            },
        },
    },
    "predict_batch": {
        "summary": "Classify several images; results in the same order",
        "description": 'Multipart with several `files`, or JSON `{"images": [base64, ...]}`.',
        "openapi_extra": {
            "parameters": _PARAMS_DOC,
            "requestBody": _body(batch=True),
            "responses": {
                **_ok(
                    {
                        "type": "object",
                        "properties": {
                            **_HEAD,
                            "results": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "properties": {"predictions": _PREDICTIONS},
                                },
                            },
                        },
                    }
                ),
                **_ERRORS,
            },
        },
    },
    "models": {
        "summary": "Models served: versions, labels, input contract, runtime, metrics",
        "openapi_extra": {"responses": _ok({"type": "object"})},
    },
}


class Admission:
    """A per-worker cap on images admitted and not yet answered (a bounded queue).

    Beyond the cap a request is refused at once with 503 and ``Retry-After`` rather than queued
    without bound; under the cap nothing is refused, so BentoML's dispatcher never has to shed.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.inflight = 0

    def acquire(self, n: int, retry_after: int) -> None:
        if self.inflight + n > self.capacity:
            raise ApiError(
                "overloaded",
                f"the server is at capacity ({self.inflight} images in flight); retry later",
                headers={"Retry-After": str(retry_after)},
            )
        self.inflight += n

    def release(self, n: int) -> None:
        self.inflight -= n


def create_app(get_backend: Callable[[], Backend], cfg: Any) -> FastAPI:
    """The Starlette app; ``get_backend`` is called per request (the service sets it up late)."""
    admission = Admission(cfg.max_inflight_images)

    def error_response(exc: ApiError, backend: Backend | None) -> JSONResponse:
        if backend is not None and backend.metrics is not None and is_input_error(exc.code):
            backend.metrics.rejected_inputs.labels(reason=exc.code).inc()
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    def decode_all(blobs: list[bytes], model: LoadedModel, metrics: Any) -> list[np.ndarray]:
        out = []
        spec = model.manifest.input.image_spec
        for i, blob in enumerate(blobs):
            t0 = time.perf_counter()
            try:
                out.append(decode_image(blob, spec, max_pixels=cfg.max_pixels))
            except ImageDecodeError as exc:
                raise ApiError.from_decode(exc, i if len(blobs) > 1 else None) from exc
            if metrics is not None:
                metrics.preprocess_seconds.observe(time.perf_counter() - t0)
        return out

    async def predict_common(request: Request, batch: bool) -> Response:
        backend = None
        try:
            backend = get_backend()
            if not backend.registry.ready:
                why = backend.registry.load_error or "models are still loading"
                raise ApiError("not_ready", why, headers={"Retry-After": "1"})
            blobs, name, version, k = await parse_request(
                request,
                batch=batch,
                max_body_bytes=cfg.max_body_bytes,
                default_top_k=cfg.top_k,
            )
            if len(blobs) > cfg.max_batch_images:
                raise ApiError(
                    "too_many_images",
                    f"{len(blobs)} images, over the limit of {cfg.max_batch_images} per request",
                )
            model = backend.registry.resolve(name, version)
            admission.acquire(len(blobs), cfg.retry_after_s)
            try:
                if decode_inline(blobs):
                    arrays = decode_all(blobs, model, backend.metrics)
                else:
                    arrays = await anyio.to_thread.run_sync(
                        decode_all, blobs, model, backend.metrics
                    )
                items = [Pending(model, a) for a in arrays]
                await backend.infer(items)
            finally:
                admission.release(len(blobs))
            labels = model.manifest.labels
            results = [
                {"predictions": top_k(p.scores, labels, k)} for p in items if p.scores is not None
            ]
            head = {"model": model.name, "version": model.version}
            if batch:
                return JSONResponse({**head, "results": results})
            return JSONResponse({**head, **results[0]})
        except ApiError as exc:
            return error_response(exc, backend)
        except Exception:
            log.exception("unexpected error in %s", request.url.path)
            return error_response(ApiError("internal", "internal error; see the server log"), None)

    async def predict(request: Request) -> Response:
        return await predict_common(request, batch=False)

    async def predict_batch(request: Request) -> Response:
        return await predict_common(request, batch=True)

    async def models(request: Request) -> Response:
        return JSONResponse(get_backend().registry.describe())

    async def demo_redirect(request: Request) -> Response:
        return RedirectResponse("/demo/")

    async def http_error(request: Request, exc: Exception) -> Response:
        """Starlette's own 404/405 inside this app, answered in the same JSON shape."""
        status = getattr(exc, "status_code", 500)
        code = {404: "not_found", 405: "method_not_allowed"}.get(status, "bad_request")
        err = ApiError(code, str(getattr(exc, "detail", "")) or code.replace("_", " "))
        return JSONResponse(err.body(), status_code=status, headers=getattr(exc, "headers", None))

    app = FastAPI(
        title="handserve",
        # BentoML serves the merged OpenAPI document and Swagger page; FastAPI's would clash.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        exception_handlers={HTTPException: http_error},
    )
    app.add_api_route("/predict", predict, methods=["POST"], tags=["predict"], **OPENAPI["predict"])
    app.add_api_route(
        "/predict_batch",
        predict_batch,
        methods=["POST"],
        tags=["predict"],
        **OPENAPI["predict_batch"],
    )
    app.add_api_route("/models", models, methods=["GET"], tags=["models"], **OPENAPI["models"])
    app.router.routes.append(Route("/demo", demo_redirect, methods=["GET"]))
    app.mount("/demo", StaticFiles(directory=STATIC_DIR, html=True, check_dir=False))
    app.state.admission = admission
    return app


class LocalBackend:
    """Runs batches directly in a thread: the in-process test backend (no BentoML batching)."""

    def __init__(self, registry: ModelRegistry, metrics: Any = None) -> None:
        self.registry = registry
        self.metrics = metrics

    async def infer(self, items: list[Pending]) -> None:
        await anyio.to_thread.run_sync(self.registry.run_batch, items)
