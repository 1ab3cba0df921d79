"""Slow clients are cut off, against a real ``bentoml serve`` (service/connections.py).

Before, a client that sent part of its headers, dripped them a byte at a time or sent nothing
held its connection (and a file descriptor of the worker) for as long as it liked; only the
body had a deadline (408 ``body_timeout``, tests/service/test_hardening.py).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
import requests

from service.local_server import wait_ready
from tests.service.helpers import digit_png, running_server
from tests.service.test_reload import publish

pytestmark = [pytest.mark.server, pytest.mark.slow]

HEADER_TIMEOUT_S = 1.5
KEEP_ALIVE_TIMEOUT_S = 1.0
#: Scheduling slack on a busy 2-core machine.
SLACK_S = 3.0


@pytest.fixture(scope="module")
def slow_server(
    tiny_export: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, psutil.Process]]:
    """(URL, the worker process) of a one-worker server with short connection timeouts."""
    home = tmp_path_factory.mktemp("slow_clients")
    publish(tiny_export, home / "models", "digits", 1)
    env = {
        "HANDSERVE_RUNTIME": "litert",
        "HANDSERVE_WORKERS": "1",
        "HANDSERVE_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "HANDSERVE_KEEP_ALIVE_TIMEOUT_S": str(KEEP_ALIVE_TIMEOUT_S),
    }
    with running_server(home / "models", home, env) as (url, proc, _):
        wait_ready(url, proc, timeout=180)
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True)]
        worker = next(p for p in workers if "worker" in " ".join(p.cmdline()))
        yield url, worker


def connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=HEADER_TIMEOUT_S + 30)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def host(url: str) -> str:
    return urlsplit(url).netloc


def test_partial_headers_get_408_and_the_connection_closed(slow_server) -> None:
    url, _ = slow_server
    with connect(url) as sock:
        started = time.monotonic()
        sock.sendall(f"POST /predict HTTP/1.1\r\nHost: {host(url)}\r\nContent-Ty".encode())
        answer = read_until_closed(sock)
        elapsed = time.monotonic() - started
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer
    assert json.loads(body)["error"]["code"] == "header_timeout"
    assert HEADER_TIMEOUT_S - 0.2 < elapsed < HEADER_TIMEOUT_S + SLACK_S


def test_dripped_headers_do_not_extend_the_deadline(slow_server) -> None:
    """Slowloris: a header byte every 0.2 s keeps the connection busy but never finishes."""
    url, _ = slow_server
    with connect(url) as sock:
        started = time.monotonic()
        sock.sendall(f"GET /models HTTP/1.1\r\nHost: {host(url)}\r\n".encode())
        with pytest.raises(OSError):  # the server closes while bytes are still dripping
            for _ in range(int((HEADER_TIMEOUT_S + SLACK_S) / 0.2)):
                sock.sendall(b"X")
                time.sleep(0.2)
            raise AssertionError("the connection stayed open")  # not OSError: fails the test
        elapsed = time.monotonic() - started
    assert elapsed < HEADER_TIMEOUT_S + SLACK_S


def test_a_connection_that_sends_nothing_is_closed_silently(slow_server) -> None:
    url, _ = slow_server
    with connect(url) as sock:
        started = time.monotonic()
        assert read_until_closed(sock) == b""  # nothing to answer: no request began
        assert time.monotonic() - started < HEADER_TIMEOUT_S + SLACK_S


def test_an_idle_keep_alive_connection_is_closed(slow_server) -> None:
    url, _ = slow_server
    with connect(url) as sock:
        for _ in range(2):  # the second request also shows the header timer restarts cleanly
            sock.sendall(f"GET /models HTTP/1.1\r\nHost: {host(url)}\r\n\r\n".encode())
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 "), data
            length = int(
                next(
                    h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")
                ).split(b":")[1]
            )
            while len(body) < length:
                body += sock.recv(65536)
            time.sleep(KEEP_ALIVE_TIMEOUT_S / 2)  # idle, but within the keep-alive timeout
        started = time.monotonic()
        assert read_until_closed(sock) == b""
        elapsed = time.monotonic() - started
    assert KEEP_ALIVE_TIMEOUT_S / 2 - 0.2 < elapsed < KEEP_ALIVE_TIMEOUT_S + SLACK_S


def test_many_slow_clients_release_their_descriptors(slow_server) -> None:
    """200 slowloris connections: a normal client is served meanwhile, and once the deadline
    passes the worker holds no more file descriptors than before."""
    url, worker = slow_server
    baseline = worker.num_fds()
    socks = [connect(url) for _ in range(200)]
    try:
        for sock in socks:
            sock.sendall(f"GET /models HTTP/1.1\r\nHost: {host(url)}\r\n".encode())
        time.sleep(0.3)
        assert worker.num_fds() >= baseline + 150  # they are held, for now
        r = requests.post(url + "/predict", files={"image": digit_png(1)}, timeout=10)
        assert r.status_code == 200, r.text
        closed = threading.Event()

        def all_closed() -> None:
            for sock in socks:
                read_until_closed(sock)
            closed.set()

        threading.Thread(target=all_closed, daemon=True).start()
        assert closed.wait(HEADER_TIMEOUT_S + SLACK_S + 5), "some slow clients were kept"
    finally:
        for sock in socks:
            sock.close()
    deadline = time.monotonic() + 5
    while worker.num_fds() > baseline and time.monotonic() < deadline:
        time.sleep(0.1)
    assert worker.num_fds() <= baseline
