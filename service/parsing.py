"""Turning a predict request into encoded images and parameters, refusing bad input early.

``/predict`` and ``/predict_batch`` accept an image as multipart file(s), as a raw body with an
``image/*`` content type, or as JSON with base64. Every check that can be made before any
decoding is made here, cheapest first: body size (declared, then counted while reading), a
deadline on reading the body, the shape of JSON before parsing it, then parameters. Nothing here
imports BentoML or touches a model.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from starlette.datastructures import QueryParams, UploadFile
from starlette.requests import ClientDisconnect, Request
from starlette.types import Message

from handserve import integers
from service.errors import ApiError, json_object
from service.schemas import PARAMS, Params, describe_validation

#: A JSON predict body is one object holding a list at most: more brackets than this is not one
#: of ours, and refusing it before ``json.loads`` keeps deep nesting from recursing.
MAX_JSON_BRACKETS = 8


@dataclass(frozen=True)
class Parsed:
    """What a predict request asks for: the encoded images and the parameters."""

    images: list[bytes]
    params: Params


def parse_params(raw: Mapping[str, Any], where: str) -> Params:
    """Validate parameters from the query string, form fields or JSON keys (``where``)."""
    try:
        return Params.model_validate(dict(raw))
    except ValidationError as exc:
        code = (
            "unknown_field"
            if any(e.get("type") == "extra_forbidden" for e in exc.errors())
            else "bad_parameter"
        )
        raise ApiError(code, describe_validation(exc, where)) from None


@functools.lru_cache(maxsize=256)
def _cached_query(query_string: bytes) -> Params:
    return parse_params(QueryParams(query_string), "query")


def query_params(query_string: bytes) -> Params:
    """The parameters of a request's query string (``scope["query_string"]``).

    Clients send the same few strings (``?model=digits``) thousands of times, and parsing and
    validating one costs about 15 µs of a 0.8 ms request; so each short one is validated once
    (``Params`` is frozen). A refused string is not cached: it raises each time.
    """
    if len(query_string) > 200:  # long ones are rare, and must not fill memory
        return parse_params(QueryParams(query_string), "query")
    return _cached_query(query_string)


def b64decode(value: Any, index: int | None = None) -> bytes:
    where = "image" if index is None else f"images[{index}]"
    if not isinstance(value, str):
        raise ApiError("bad_base64", f"{where} must be a base64 string")
    if value.startswith("data:") and "," in value[:100]:  # a data URL from a browser canvas
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError("bad_base64", f"{where} is not valid base64: {exc}") from None


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The body, refusing more than ``limit`` bytes and a client that stalls while sending.

    The declared length is checked before reading; the bytes are counted while reading (a
    chunked body declares none); and the whole read must finish within ``timeout_s``, so a
    client that stops mid-body gets a 408 in seconds instead of holding a slot until the
    server's request timeout.
    """
    header = request.headers.get("content-length")
    if header is not None:
        length = integers.ascii_int(header)
        if length is None:
            raise ApiError("bad_request", "Content-Length is not a number")
        if length > limit:
            raise ApiError(
                "body_too_large", f"the body is {length:,} bytes, over the limit of {limit:,}"
            )
    chunks, size = [], 0
    try:
        # asyncio's own timeout: anyio.fail_after cost 0.1 ms per request here (measured)
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(
                        "body_too_large", f"the body is over the limit of {limit:,} bytes"
                    )
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(
            "body_timeout",
            f"the body was not received within {timeout_s:g} s ({size:,} bytes arrived)",
        ) from None
    except ClientDisconnect:
        raise ApiError("bad_request", "the client disconnected while sending") from None
    return b"".join(chunks)


def _load_json(body: bytes, batch: bool, max_images: int) -> dict[str, Any]:
    """``json.loads`` after cheap checks that bound its cost: nesting and element count."""
    if body.count(b"[") + body.count(b"{") > MAX_JSON_BRACKETS:
        raise ApiError("bad_json", "the JSON body is nested deeper than a predict request")
    # Base64 has no commas; a data: URL has one. So more commas than this means more images
    # than allowed, which is refused before spending time parsing a million-element list.
    if batch and body.count(b",") > 2 * max_images + 2 * len(PARAMS) + 2:
        raise ApiError(
            "too_many_images", f"the JSON list holds more than {max_images} images per request"
        )
    return json_object(body, "the body")


async def _from_multipart(
    request: Request, body: bytes, max_images: int
) -> tuple[list[bytes], dict[str, Any]]:
    """The files and fields of a multipart ``body``, already read (and counted) from ``request``.

    Starlette's form parser reads from a request: a new one over the same scope gets the bytes
    from a ``receive`` that replays them (the client's stream is spent).
    """

    async def replay() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(
            max_files=max_images + 1, max_fields=len(PARAMS) + 1
        )
    except Exception as exc:  # malformed multipart: starlette raises several types
        if "Too many files" in str(exc):
            raise ApiError(
                "too_many_images", f"more than {max_images} images per request"
            ) from None
        raise ApiError("bad_request", f"malformed multipart body: {exc}"[:300]) from None
    images: list[bytes] = []
    fields: dict[str, Any] = {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            images.append(await value.read())
        else:
            fields[key] = value
    return images, fields


def _from_json(body: bytes, batch: bool, max_images: int) -> tuple[list[bytes], dict[str, Any]]:
    """The base64 images of a JSON body (``image``, or ``images`` for a batch) and its other
    keys, which are parameters."""
    data = _load_json(body, batch, max_images)
    key = "images" if batch else "image"
    if key not in data:
        raise ApiError("bad_request", f"the JSON body has no {key!r} field")
    value = data.pop(key)
    if not batch:
        return [b64decode(value)], data
    if not isinstance(value, list):
        raise ApiError("bad_request", "images must be a list of base64 strings")
    if len(value) > max_images:
        raise ApiError(
            "too_many_images", f"{len(value)} images, over the limit of {max_images} per request"
        )
    return [b64decode(v, i) for i, v in enumerate(value)], data


async def parse_request(
    request: Request,
    *,
    batch: bool,
    max_body_bytes: int,
    max_images: int,
    body_timeout_s: float,
    query: Params,
) -> Parsed:
    """The encoded images and parameters of a predict request, in any of the three forms.

    Body parameters (form fields, JSON keys) override the query string's.

    Raises:
        ApiError: the body is too large, too slow, malformed, empty or has unknown fields.
    """
    body = await read_body(request, max_body_bytes, body_timeout_s)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        images, fields = await _from_multipart(request, body, max_images)
        where = "form"
    elif ctype == "application/json":
        images, fields = _from_json(body, batch, max_images)
        where = "JSON"
    elif ctype.startswith("image/") or ctype == "application/octet-stream":
        images, fields, where = [body], {}, "body"
    elif not body:
        raise ApiError("empty", "the request has no body; send an image")
    else:
        raise ApiError(
            "unsupported_media_type",
            f"Content-Type {ctype[:60] or 'none'!r} is not supported; use multipart/form-data, "
            "image/*, application/octet-stream or application/json",
        )
    params = query
    if fields:
        body_params = parse_params(fields, where)
        params = query.model_copy(update=body_params.model_dump(exclude_none=True))
    if not images:
        raise ApiError("empty", "the request contains no image")
    if not batch and len(images) > 1:
        raise ApiError("bad_request", f"/predict takes one image, got {len(images)}")
    if len(images) > max_images:
        raise ApiError(
            "too_many_images", f"{len(images)} images, over the limit of {max_images} per request"
        )
    return Parsed(images, params)


def read_files(files: list[Path], max_images: int, max_bytes: int) -> list[bytes]:
    """The images of a typed endpoint (``/classify``), which BentoML saved as temporary files:
    their number and each file's size checked before any is read, as ``/predict`` checks its
    body."""
    if not 0 < len(files) <= max_images:
        raise ApiError(
            "too_many_images" if files else "empty",
            f"send 1 to {max_images} images, not {len(files)}",
        )
    blobs = []
    for i, file in enumerate(files):
        size = file.stat().st_size
        if size > max_bytes:
            raise ApiError(
                "body_too_large", f"image {i} is {size} bytes, over max_body_bytes ({max_bytes})"
            )
        blobs.append(file.read_bytes())
    return blobs
