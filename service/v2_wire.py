"""The Open Inference Protocol's bytes on the wire: compression, the JSON header and the
binary tensor data after it, BYTES elements, and the response body.

:mod:`service.v2` gives these bytes their meaning (which inputs, shapes and datatypes a model
takes); this module only frames them, so each half can be read and tested on its own.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from handserve import integers
from handserve.ranking import top_k
from service.errors import ApiError, json_object

HEADER_LENGTH = "Inference-Header-Content-Length"
OUTPUT = "probabilities"


@dataclass(frozen=True)
class Output:
    """What one requested output wants: all probabilities or the top ``classification``."""

    classification: int  # 0: the probabilities tensor
    binary: bool


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body a client compressed (``Content-Encoding``, as tritonclient can), bounded.

    The decompressed size is capped at ``limit`` while inflating, so a small bomb is refused
    without allocating what it expands to.
    """
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise ApiError(
            "unsupported_media_type",
            f"Content-Encoding {encoding[:30]!r} is not supported; use gzip, deflate or none",
        )
    inflater = zlib.decompressobj(zlib.MAX_WBITS | (16 if encoding == "gzip" else 0))
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ApiError("bad_request", f"the {encoding} body is corrupt: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise ApiError("body_too_large", f"the decompressed body is over {limit:,} bytes")
    if not inflater.eof:
        raise ApiError("bad_request", f"the {encoding} body is truncated")
    return out


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The JSON object and the binary data after it (binary tensor data extension)."""
    if header_length is None:
        json_part, binary = body, b""
    else:
        size = integers.ascii_int(header_length.strip())
        if size is None:
            raise ApiError("bad_request", f"{HEADER_LENGTH} is not a number")
        if size > len(body):
            raise ApiError(
                "bad_request",
                f"{HEADER_LENGTH} is {size:,} but the body has only {len(body):,} bytes",
            )
        json_part, binary = body[:size], body[size:]
    if not json_part.strip():
        raise ApiError("empty", "the request has no JSON inference header")
    return json_object(json_part, "the inference header"), binary


def deserialize_bytes(raw: bytes) -> list[bytes]:
    """BYTES tensor data: each element a 4-byte little-endian length, then that many bytes."""
    out: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ApiError("bad_request", f"BYTES data is truncated in element {len(out)}'s length")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise ApiError(
                "bad_request",
                f"BYTES element {len(out)} declares {size:,} bytes; {len(raw) - offset:,} remain",
            )
        out.append(raw[offset : offset + size])
        offset += size
    return out


def serialize_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


# ---------------------------------------------------------------------- responses
def classification(scores: np.ndarray, labels: list[str], k: int) -> list[list[bytes]]:
    """Triton's classification strings, ``score:index:label``, best first, one list per row."""
    return [
        [f"{c['score']:f}:{c['index']}:{c['label']}".encode() for c in top_k(row, labels, k)]
        for row in scores
    ]


def render(
    outputs_wanted: list[Output],
    request_id: str | None,
    name: str,
    version: int,
    labels: list[str],
    scores: np.ndarray,
) -> tuple[bytes, dict[str, str], Literal["application/json", "application/octet-stream"]]:
    """The response body, its headers and content type: JSON, or JSON then binary outputs."""
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    n = len(scores)
    for want in outputs_wanted:
        if want.classification:
            rows = classification(scores, labels, want.classification)
            strings = [s for row in rows for s in row]
            tensor: dict[str, Any] = {
                "name": OUTPUT,
                "datatype": "BYTES",
                "shape": [n, want.classification],  # clamped to the classes (v2.py)
            }
            if want.binary:
                blob = serialize_bytes(strings)
            else:
                tensor["data"] = [s.decode() for s in strings]
        else:
            tensor = {"name": OUTPUT, "datatype": "FP32", "shape": [n, scores.shape[1]]}
            if want.binary:
                blob = np.ascontiguousarray(scores, "<f4").tobytes()
            else:
                tensor["data"] = scores.astype(np.float32).ravel().tolist()
        if want.binary:
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        outputs.append(tensor)
    head: dict[str, Any] = {"model_name": name, "model_version": str(version)}
    if request_id is not None:
        head["id"] = request_id
    head["outputs"] = outputs
    header = json.dumps(head).encode()
    if not blobs:
        return header, {}, "application/json"
    return (
        header + b"".join(blobs),
        {HEADER_LENGTH: str(len(header))},
        "application/octet-stream",
    )
