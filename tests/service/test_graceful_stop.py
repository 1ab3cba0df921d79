"""SIGTERM under load, many times: every request sent before the signal is answered, the server
exits 0 (issue 34: 1 run in 17 reset 2 of 8 in-flight requests).

Each round starts a two-worker server, runs 8 keep-alive clients sending ``/predict`` back to
back and one sending 64-image ``/predict_batch`` requests, and sends SIGTERM to the ``bentoml
serve`` process alone (as Kubernetes does) at a random moment. Twenty rounds, so a failure in
one run of twenty shows. What the clients send *after* the signal is not asserted: the server
no longer accepts it (docs/service.md has what those clients see).
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from service.local_server import wait_ready
from tests.service.helpers import digit_png, running_server
from tests.service.test_reload import publish

pytestmark = [pytest.mark.server, pytest.mark.slow]

ROUNDS = 20
CLIENTS = 8


@dataclass
class Call:
    started: float
    status: int | None  # None: no answer (reset, closed)
    error: str = ""


BATCH = [("files", (f"{i}.png", digit_png(i, size=256), "image/png")) for i in range(64)]


class Client(threading.Thread):
    """Requests back to back on one keep-alive session until ``stop`` or a failure; each
    call's start and status in ``calls``; ``sending`` is set while a request is out."""

    def __init__(self, url: str, stop: threading.Event, *, batch: bool) -> None:
        super().__init__(daemon=True)
        self.url, self.stop, self.batch = url, stop, batch
        self.calls: list[Call] = []
        self.sending = threading.Event()

    def run(self) -> None:
        path = "/predict_batch" if self.batch else "/predict"
        files = BATCH if self.batch else {"image": digit_png(1)}
        with requests.Session() as session:
            while not self.stop.is_set():
                started = time.monotonic()
                self.sending.set()
                try:
                    status = session.post(self.url + path, files=files, timeout=60).status_code
                    self.calls.append(Call(started, status))
                except requests.RequestException as exc:
                    self.calls.append(Call(started, None, f"{type(exc).__name__}: {exc}"))
                    return
                finally:
                    self.sending.clear()


def wait_until(check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "load did not start"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def models(tiny_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("graceful") / "models"
    publish(tiny_export, folder, "digits", 1)
    return folder


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_sigterm_under_load_answers_everything_in_flight(
    models: Path, tmp_path: Path, round_: int
) -> None:
    env = {"HANDSERVE_RUNTIME": "litert", "HANDSERVE_WORKERS": "2"}
    with running_server(models, tmp_path, env) as (url, proc, _):
        wait_ready(url, proc, timeout=180)
        stop = threading.Event()
        clients = [Client(url, stop, batch=i == CLIENTS) for i in range(CLIENTS + 1)]
        for c in clients:
            c.start()
        wait_until(lambda: all(c.calls for c in clients))  # every client has been answered
        long = clients[-1]
        long.sending.clear()
        wait_until(long.sending.is_set)  # a 64-image batch has just been sent
        time.sleep(random.Random(round_).uniform(0, 0.1))
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
        stopped = time.monotonic() - signalled
        stop.set()
        for c in clients:
            c.join(60)
    in_flight = [call for c in clients for call in c.calls if call.started < signalled]
    lost = [call for call in in_flight if call.status != 200]
    assert rc == 0 and stopped < 30, (rc, stopped)
    assert len(in_flight) > CLIENTS  # load flowed; the batch sent just before is among them
    assert lost == [], lost
