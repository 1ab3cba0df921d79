"""Client-facing errors: one exception type, one JSON shape, one status per code.

Every refusal the service makes is an :class:`ApiError`, answered as
``{"error": {"code": ..., "message": ...}}`` so clients can branch on ``code`` without parsing
messages. The codes double as the ``reason`` label of ``handserve_rejected_inputs_total``.
"""

from __future__ import annotations

from typing import Any

from handserve.images import ImageDecodeError

#: code -> HTTP status. Image decode codes come from handserve.images.ImageDecodeError.
STATUS: dict[str, int] = {
    "empty": 400,
    "not_an_image": 400,
    "truncated": 400,
    "too_many_pixels": 413,
    "body_too_large": 413,
    "too_many_images": 413,
    "bad_request": 400,
    "bad_json": 400,
    "bad_base64": 400,
    "bad_parameter": 422,
    "unknown_field": 422,
    "unsupported_media_type": 415,
    "unsupported_format": 415,
    "body_timeout": 408,
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
