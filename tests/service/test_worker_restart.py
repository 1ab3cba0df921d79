"""Ready means ready, per worker: a worker killed under load comes back without a 503.

BentoML's process manager restarts a worker that dies; the new process accepts connections
from the shared socket before its models are loaded. It then holds those requests until its
load is done (``DataPlane.hold_while_loading_s``) instead of answering 503 ``not_ready`` while
``/readyz`` (answered by its peers) says 200. Clients here open a new connection per request,
as the operator's clients did when 71 requests got 503 in the 8-10 s after each kill.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
import requests

from service.local_server import wait_ready
from tests.service.helpers import digit_png, running_server
from tests.service.test_balance_server import workers_of

pytestmark = [pytest.mark.slow, pytest.mark.server]

KILLS = 3
CLIENTS = 4


def test_a_killed_worker_comes_back_without_503(service_models: Path, tmp_path: Path) -> None:
    env = {"HANDSERVE_WORKERS": "2", "HANDSERVE_DEFAULT_MODEL": "tiny"}
    image = digit_png(3)
    answers: Counter[str] = Counter()
    stop = threading.Event()

    with running_server(service_models, tmp_path, env) as (url, proc, _):
        wait_ready(url, proc, timeout=180)

        def client() -> None:
            while not stop.is_set():
                try:  # no session: a new connection per request
                    resp = requests.post(
                        url + "/predict",
                        data=image,
                        headers={"Content-Type": "image/png", "Connection": "close"},
                        timeout=60,
                    )
                    answers[str(resp.status_code)] += 1
                    if resp.status_code != 200:
                        answers["body: " + resp.text[:120]] += 1
                except requests.ConnectionError:
                    answers["reset"] += 1  # in flight on the worker at the moment it died

        threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        readyz: Counter[int] = Counter()
        try:
            for _ in range(KILLS):
                before = {w.pid for w in workers_of(proc.pid)}
                victim = sorted(before)[0]
                os.kill(victim, signal.SIGKILL)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:  # until its replacement serves
                    readyz[requests.get(url + "/readyz", timeout=10).status_code] += 1
                    now = {w.pid for w in workers_of(proc.pid)}
                    if len(now) == 2 and victim not in now and _served_by_all(url, now):
                        break
                    time.sleep(0.2)
                else:
                    pytest.fail(f"worker {victim} was not replaced within 60 s")
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)

    assert answers["200"] > 0
    refused = {k: v for k, v in answers.items() if k not in ("200", "reset")}
    assert refused == {}, f"non-200 answers after kills: {refused} (answers: {answers})"
    assert answers["reset"] <= KILLS * CLIENTS  # only what was in flight on the dead worker


def _served_by_all(url: str, pids: set[int]) -> bool:
    """Each worker has marked itself ready (its models loaded) in the server's shared folder."""
    marks = set()
    for pid in pids:
        try:
            parent = psutil.Process(pid).ppid()
        except psutil.Error:
            return False
        folder = Path("/tmp") / f"handserve-ready-{parent}"
        if (folder / f"worker-{pid}").exists():
            marks.add(pid)
    return marks == pids
