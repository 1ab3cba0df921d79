"""service/deadline.py: 504 in the API's error shape at the timeout, and the work stops.

A small Starlette app stands in for the service: its route "decodes" images in a worker
thread, as the engine does, calling ``deadline.check()`` before each one.
"""

from __future__ import annotations

import threading
import time

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from service import deadline

IMAGES = 40
IMAGE_S = 0.05  # 2 s for a whole request; the deadline is 0.3 s


def make_app(done: list[int]) -> Starlette:
    def decode_all() -> int:
        for _ in range(IMAGES):
            deadline.check()
            time.sleep(IMAGE_S)
            done.append(1)
        return len(done)

    async def slow(request: Request) -> JSONResponse:
        return JSONResponse({"decoded": await anyio.to_thread.run_sync(decode_all)})

    async def quick(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True}, status_code=201)

    return Starlette(
        routes=[
            Route("/predict_batch", slow, methods=["POST"]),
            Route("/v2/models/m/infer", slow, methods=["POST"]),
            Route("/quick", quick),
            Route("/readyz", slow),
        ]
    )


@pytest.mark.parametrize(
    ("path", "shape"),
    [("/predict_batch", "image API"), ("/v2/models/m/infer", "Open Inference Protocol")],
)
def test_a_request_past_the_deadline_gets_504_in_its_api_shape_and_stops(
    path: str, shape: str
) -> None:
    done: list[int] = []
    with TestClient(deadline.Deadline(make_app(done), timeout_s=0.3)) as client:
        resp = client.post(path)
        assert len(done) < IMAGES  # answered at the deadline, not at the end of the work
        assert resp.status_code == 504, shape
        body = resp.json()
        if path.startswith("/v2"):
            assert isinstance(body["error"], str) and "timeout (0.3 s)" in body["error"]
        else:
            assert body["error"]["code"] == "timeout"
            assert "timeout (0.3 s)" in body["error"]["message"]
        time.sleep(0.5)  # the image being decoded at the deadline finishes
        stopped_at = len(done)
        time.sleep(0.5)
        assert len(done) == stopped_at < IMAGES  # no image decoded after that one


def test_requests_within_the_deadline_and_probes_pass_untouched() -> None:
    done: list[int] = []
    with TestClient(deadline.Deadline(make_app(done), timeout_s=0.3)) as client:
        resp = client.get("/quick")
        assert resp.status_code == 201 and resp.json() == {"ok": True}
        # /readyz is never cut off: it runs to the end (2 s here) and answers itself
        resp = client.get("/readyz")
        assert resp.status_code == 200 and resp.json() == {"decoded": IMAGES}


def test_check_outside_a_request_does_nothing() -> None:
    deadline.check()  # no request, no deadline: nothing to stop
    event = threading.Event()
    token = deadline._expired.set(event)
    try:
        deadline.check()
        event.set()
        with pytest.raises(deadline.Expired) as err:
            deadline.check()
        assert err.value.code == "timeout" and err.value.status == 504
    finally:
        deadline._expired.reset(token)
