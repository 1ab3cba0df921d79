"""Property-based fuzzing of the request parser and the image decoder (Hypothesis).

Random bodies, content types, parameters, and truncated or mutated real images, sent to the
service's routes in-process: every answer must be a 200 with predictions or one of the
documented refusals, in the service's error shape. A 5xx, a traceback or another shape fails.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from service.config import ServiceConfig
from service.errors import STATUS
from tests.service.helpers import inprocess_client

pytestmark = pytest.mark.slow

#: What a request may be answered with when the server is ready and not overloaded.
DOCUMENTED = {200, 400, 404, 408, 413, 415, 422}


def _image(fmt: str, mode: str, size: tuple[int, int], seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    arr = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    img = Image.fromarray(arr[..., 0] if channels == 1 else arr, mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@st.composite
def images(draw: Any) -> bytes:
    """A real PNG/JPEG/GIF/WebP/BMP, often truncated or with bytes flipped."""
    fmt = draw(st.sampled_from(["PNG", "JPEG", "GIF", "WEBP", "BMP"]))
    mode = draw(st.sampled_from(["L", "RGB"] + (["RGBA"] if fmt in ("PNG", "WEBP") else [])))
    size = (draw(st.integers(1, 64)), draw(st.integers(1, 64)))
    data = bytearray(_image(fmt, mode, size, draw(st.integers(0, 2**16))))
    action = draw(st.sampled_from(["keep", "truncate", "flip", "prefix"]))
    if action == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif action == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= draw(st.integers(1, 255))
    elif action == "prefix":
        data = bytearray(draw(st.binary(max_size=16))) + data
    return bytes(data)


PARAM_KEYS = st.sampled_from(["model", "version", "top_k", "colour", "", "\u00b2"])
PARAM_VALUES = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["tiny", "1", "3", "0", "-1", "\u00b2", "+-5", "9" * 30, "1_0", " 2"]),
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)


@st.composite
def requests_(draw: Any) -> dict[str, Any]:
    """One request: path, query, content type and body in any of the forms, often malformed."""
    path = draw(st.sampled_from(["/predict", "/predict_batch"]))
    query = draw(st.dictionaries(PARAM_KEYS, PARAM_VALUES, max_size=3))
    form = draw(st.sampled_from(["raw", "json", "multipart", "garbage"]))
    headers: dict[str, str] = {}
    kwargs: dict[str, Any] = {"params": query}
    if form == "raw":
        headers["Content-Type"] = draw(
            st.sampled_from(["image/png", "image/jpeg", "application/octet-stream", "image/x"])
        )
        kwargs["content"] = draw(st.one_of(images(), st.binary(max_size=300)))
    elif form == "json":
        body: dict[str, Any] = draw(st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=3))
        key = draw(st.sampled_from(["image", "images", "img"]))
        encoded = base64.b64encode(draw(images())).decode()
        body[key] = draw(
            st.sampled_from([encoded, [encoded], [encoded, encoded], "@@", 5, "data:x," + encoded])
        )
        body.update(draw(st.dictionaries(PARAM_KEYS, PARAM_VALUES | st.integers(), max_size=2)))
        kwargs["content"] = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    elif form == "multipart":
        n = draw(st.integers(0, 3))
        kwargs["files"] = [("files", (f"{i}.png", draw(images()), "image/png")) for i in range(n)]
        kwargs["data"] = draw(st.dictionaries(PARAM_KEYS, PARAM_VALUES, max_size=2))
    else:
        headers["Content-Type"] = draw(
            st.sampled_from(["text/plain", "application/json", "multipart/form-data", ""])
        )
        kwargs["content"] = draw(st.binary(max_size=200))
    kwargs["headers"] = headers
    return {"path": path, "kwargs": kwargs}


@pytest.fixture(scope="module")
def client(tiny_export: Path, tmp_path_factory: pytest.TempPathFactory):
    models = tmp_path_factory.mktemp("fuzz") / "models"
    shutil.copytree(tiny_export, models / "tiny" / "1")
    cfg = ServiceConfig(
        models_dir=str(models),
        runtime="litert",
        max_body_bytes=200_000,
        max_batch_images=2,
        warmup_batches=0,
    )
    with inprocess_client(cfg) as (c, _):
        yield c


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=requests_())
def test_any_request_gets_a_200_or_a_documented_refusal(client, request) -> None:
    resp = client.post(request["path"], **request["kwargs"])
    assert resp.status_code in DOCUMENTED, resp.text[:300]
    body = resp.json()
    if resp.status_code == 200:
        rows = body["results"] if request["path"] == "/predict_batch" else [body]
        for row in rows:
            scores = [p["score"] for p in row["predictions"]]
            assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    else:
        error = body["error"]
        assert STATUS[error["code"]] == resp.status_code, error
        assert isinstance(error["message"], str) and 0 < len(error["message"]) < 600
