"""Client-facing errors: one exception type, one JSON shape, one status per code.

Every refusal the service makes is an :class:`ApiError`, answered as
``{"error": {"code": ..., "message": ...}}`` so clients can branch on ``code`` without parsing
messages. The codes double as the ``reason`` label of ``handserve_rejected_inputs_total``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from handserve.images import ImageDecodeError

log = logging.getLogger("handserve.service")

#: code -> HTTP status. Image decode codes come from handserve.images.ImageDecodeError.
STATUS: dict[str, int] = {
    "empty": 400,
    "not_an_image": 400,
    "truncated": 400,
    "too_many_pixels": 413,
    "body_too_large": 413,
    "too_many_images": 413,
    "too_many_request_pixels": 413,  # the request's images sum to over max_request_pixels
    "bad_request": 400,
    "bad_json": 400,
    "bad_base64": 400,
    "bad_parameter": 422,
    "no_hand": 422,  # the version's contract crops the hand, and none was found
    "unknown_field": 422,
    "unsupported_media_type": 415,
    "unsupported_format": 415,
    "body_timeout": 408,
    "header_timeout": 408,  # answered by service.connections, before any route runs
    "unknown_model": 404,
    "unknown_version": 404,
    "not_found": 404,
    "method_not_allowed": 405,
    "not_ready": 503,
    "model_unavailable": 503,
    "overloaded": 503,
    "timeout": 504,
    "internal": 500,
}


#: What a client is told of an unexpected error (the traceback goes to the server log).
INTERNAL_MESSAGE = "internal error; see the server log"


class ApiError(Exception):
    """A request the service refuses, with the code clients and metrics see."""

    def __init__(self, code: str, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = STATUS.get(code, 400)
        self.headers = headers or {}

    @classmethod
    def from_decode(cls, exc: ImageDecodeError, index: int | None = None) -> ApiError:
        """Wrap the shared decoder's error; ``index`` names the image within a batch request."""
        where = "" if index is None else f"image {index}: "
        return cls(exc.code, where + exc.message)

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}

    def v2_body(self) -> dict[str, Any]:
        """The Open Inference Protocol's error shape: one message string."""
        return {"error": self.message}


def json_object(text: bytes, what: str) -> dict[str, Any]:
    """``text`` parsed as a JSON object, else a ``bad_json`` error naming ``what`` it was.

    Both request bodies (``/predict``'s JSON and the v2 inference header) come through here.
    """
    try:
        data = json.loads(text)
    # ValueError: JSONDecodeError, and an integer of over 4,300 digits (Python's limit)
    except (ValueError, RecursionError) as exc:
        raise ApiError("bad_json", f"{what} is not valid JSON: {exc}"[:300]) from None
    if not isinstance(data, dict):
        raise ApiError("bad_json", f"{what} must be a JSON object")
    return data


def is_input_error(code: str) -> bool:
    """Refusals caused by what the client sent (counted in rejected_inputs_total)."""
    return code not in (
        "not_ready",
        "model_unavailable",
        "overloaded",
        "timeout",
        "internal",
        "not_found",
        "method_not_allowed",
    )


#: Where a typed endpoint leaves its refusal in the request's ASGI state (``request.state``):
#: BentoML answers a 5xx of its own with a generic message, so :class:`JSONErrors` renders it.
REFUSAL_KEY = "handserve_refusal"

#: Routes of the Open Inference Protocol answer errors in its shape, ``{"error": "..."}``.
V2_PREFIX = "/v2"

#: Codes for refusals made outside the service's routes (BentoML's own routes and router).
_CODE_BY_STATUS = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "body_timeout",
    413: "body_too_large",
    500: "internal",
    503: "not_ready",
    504: "timeout",
}


class JSONErrors:
    """ASGI middleware: every error answer in the service's ``{"error": {code, message}}`` shape.

    The service's own routes already answer so; this covers what BentoML answers around them:
    ``/readyz`` while loading, an unknown path, a wrong method (plain text), and the typed
    endpoints' refusals and validation errors (``{"error": "code: message"}``, BentoML's shape),
    so clients parse one shape. Under ``/v2`` the Open Inference Protocol's ``{"error": "..."}``
    is the shape its clients parse, and stays. Error bodies are small: one is held until it is
    complete, then answered reshaped.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        protocol = path.startswith(V2_PREFIX)
        held: dict[str, Any] | None = None  # an error's start message, until its body is read
        body = bytearray()

        async def send_shaped(message: dict[str, Any]) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and message["status"] >= 400:
                headers = dict(message.get("headers", []))
                is_json = headers.get(b"content-type", b"").startswith(b"application/json")
                if not (is_json and protocol):
                    held = message
                    return
            if held is None or message["type"] != "http.response.body":
                await send(message)
                return
            body.extend(message.get("body", b""))
            if message.get("more_body"):
                return
            status = held["status"]
            extra: dict[str, str] = {}
            refusal = scope.get("state", {}).get(REFUSAL_KEY)
            if isinstance(refusal, ApiError):  # a typed endpoint's: as /predict answers it
                shaped: bytes | None = json.dumps(refusal.body()).encode()
                extra = refusal.headers
            else:
                shaped = _reshaped(bytes(body), status, scope)
            if shaped is None:  # already the service's shape
                await send(held)
                await send({"type": "http.response.body", "body": bytes(body)})
                return
            dropped = (b"content-type", b"content-length", *(k.lower().encode() for k in extra))
            kept = [(k, v) for k, v in held.get("headers", []) if k.lower() not in dropped]
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        *kept,
                        *((k.encode(), v.encode()) for k, v in extra.items()),
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(shaped)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": shaped})

        await self.app(scope, receive, send_shaped)


def _reshaped(body: bytes, status: int, scope: Any) -> bytes | None:
    """An error body in the service's shape, or None when it is in that shape already."""
    try:
        data = json.loads(body) if body else None
    except ValueError:
        data = None
    if isinstance(data, list) and len(data) == 1:  # BentoML answers a 4xx as a 1-item list
        data = data[0]
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return None
    text = data.get("error") if isinstance(data, dict) else None
    if isinstance(text, str) and isinstance(data, dict) and isinstance(data.get("detail"), list):
        # BentoML's validation of a typed endpoint's parameters: say which and why
        where = [
            f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg', '')}"
            for d in data["detail"]
            if isinstance(d, dict)
        ]
        text = f"{text} ({'; '.join(where)})" if where else text
    code = _CODE_BY_STATUS.get(status, "error")
    if isinstance(text, str):  # BentoML's {"error": "..."}; ours raise it as "code: message"
        prefix, sep, rest = text.partition(": ")
        if sep and STATUS.get(prefix) == status:
            code, text = prefix, rest
        message = text
    elif code == "not_ready":
        message = (
            "the server is not ready: models are loading or none could be served (see /models)"
        )
    else:
        path = str(scope.get("path", ""))[:100]
        message = f"{scope.get('method', '')} {path}: {code.replace('_', ' ')}"
    return json.dumps(ApiError(code, message).body()).encode()


# ---------------------------------------------------------------------- the app's handlers


def count_rejected(metrics: Any, err: ApiError) -> None:
    """Count a refusal caused by the input in ``handserve_rejected_inputs_total``."""
    if metrics is not None and is_input_error(err.code):
        metrics.rejected_inputs.labels(reason=err.code).inc()


def v2_error(err: ApiError) -> JSONResponse:
    """The v2 protocol's error answer, with the status of the same refusal on the image API."""
    return JSONResponse(err.v2_body(), status_code=err.status, headers=err.headers)


def _shaped(request: Request, err: ApiError, status: int | None = None) -> JSONResponse:
    v2 = request.url.path == V2_PREFIX or request.url.path.startswith(V2_PREFIX + "/")
    body = err.v2_body() if v2 else err.body()
    return JSONResponse(body, status_code=status or err.status, headers=err.headers)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every exception a route raises as JSON in the shape its API uses.

    Refusals are counted into ``app.state.metrics``, the metrics of the service instance that
    answers (not counted before there is one): the handlers are installed once on the module's
    app, before BentoML makes the instance.
    """

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        count_rejected(getattr(request.app.state, "metrics", None), exc)
        return _shaped(request, exc)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        """Starlette's 404/405 inside the app, answered in the same JSON shape."""
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        path = request.url.path[:100]
        err = ApiError(code, f"{request.method} {path}: {code.replace('_', ' ')}")
        err.headers = dict(exc.headers or {})
        return _shaped(request, err, exc.status_code)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> Response:
        log.error("unexpected error in %s", request.url.path, exc_info=exc)
        return _shaped(request, ApiError("internal", INTERNAL_MESSAGE))
