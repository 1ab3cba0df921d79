"""A request past the timeout against the real ``bentoml serve``: 504 in the API's error shape
(not BentoML's own ``{"error": "Not able to process ..."}``), and no model call after it."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from service.local_server import wait_ready
from service.v2_wire import serialize_bytes
from tests.service.helpers import metric_samples, running_server, total

pytestmark = [pytest.mark.slow, pytest.mark.server]


def big_png(seed: int, side: int = 3500) -> bytes:
    """A 12-megapixel image that compresses to a few kilobytes but costs tens of ms to decode."""
    rng = np.random.default_rng(seed)
    arr = np.full((side, side), int(rng.integers(0, 256)), np.uint8)
    arr[:: side // 10] = 255
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_a_request_past_the_timeout_gets_504_in_its_shape_and_stops(
    service_models: Path, tmp_path: Path
) -> None:
    env = {
        "HANDSERVE_TIMEOUT_S": "0.5",
        "HANDSERVE_WORKERS": "1",
        "HANDSERVE_DEFAULT_MODEL": "tiny",
        # 64 images of 12 MP: inside the pixel budget, so it is the timeout that answers; each
        # request is seconds of decoding on any machine (two threads of 32 images), far past
        # the 0.5 s deadline whatever the machine's speed
        "HANDSERVE_MAX_REQUEST_PIXELS": "2000000000",
        "HANDSERVE_MAX_INFLIGHT_PIXELS": "4000000000",
    }
    images = [big_png(i) for i in range(64)]
    with running_server(service_models, tmp_path, env) as (url, proc, _):
        wait_ready(url, proc, timeout=180)
        before = total(metric_samples(url), "handserve_predictions_total")
        files = [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
        resp = requests.post(url + "/predict_batch?model=tiny", files=files, timeout=60)
        assert resp.status_code == 504, resp.text
        error = resp.json()["error"]
        assert error["code"] == "timeout" and "0.5 s" in error["message"]

        raw = serialize_bytes(images)
        head = (
            b'{"inputs":[{"name":"image_bytes","shape":[64],"datatype":"BYTES",'
            b'"parameters":{"binary_data_size":%d}}]}' % len(raw)
        )
        resp = requests.post(
            url + "/v2/models/tiny/infer",
            data=head + raw,
            headers={"Inference-Header-Content-Length": str(len(head))},
            timeout=60,
        )
        assert resp.status_code == 504, resp.text
        assert isinstance(resp.json()["error"], str)  # the protocol's own shape

        time.sleep(3)  # the images being decoded at the deadline finish; nothing more runs
        ok = requests.post(
            url + "/predict?model=tiny",
            data=_small(),
            timeout=30,
            headers={"Content-Type": "image/png"},
        )
        assert ok.status_code == 200, ok.text  # the worker is free again
        after = total(metric_samples(url), "handserve_predictions_total")
        assert after - before == 1  # only the small request reached the model


def _small() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
