"""Keep-alive connections piled on one worker of a real server spread over both (issue 24).

The pile-up is made on purpose: one worker process is suspended (SIGSTOP) while four
keep-alive connections open, so the other accepts all four, as a load generator's connections
do by chance when they all arrive at once. Under load the busy worker must then close some of
them (``Connection: close``) until each worker holds two: which worker holds which connection
is read from the kernel's socket table (psutil), not from the server's own account.
"""

from __future__ import annotations

import http.client
import threading
import time
from urllib.parse import urlsplit

import psutil
import pytest

from service import balance
from tests.service.helpers import digit_png, metric_samples, total

pytestmark = [pytest.mark.server, pytest.mark.slow]

CONNECTIONS = 4


def workers_of(server_pid: int) -> list[psutil.Process]:
    """The server's HTTP worker processes (BentoML's ``_bentoml_impl.worker.service``)."""
    found = []
    for child in psutil.Process(server_pid).children(recursive=True):
        try:
            if any("_bentoml_impl.worker.service" in part for part in child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found


def held(worker: psutil.Process, port: int, client_ports: set[int]) -> int:
    """How many of ``client_ports``' connections to ``port`` this worker holds open."""
    return sum(
        1
        for c in worker.connections(kind="tcp")  # psutil 5.9: not yet net_connections
        if c.status == psutil.CONN_ESTABLISHED
        and c.laddr
        and c.laddr.port == port
        and c.raddr
        and c.raddr.port in client_ports
    )


def test_connections_piled_on_one_worker_are_spread(server) -> None:
    url = urlsplit(server.url)
    host, port = url.hostname or "127.0.0.1", int(url.port or 80)
    workers = workers_of(server.proc.pid)
    assert len(workers) == 2, "the session server runs two workers (conftest)"
    body = digit_png(3)
    headers = {"Content-Type": "image/png"}
    before = total(metric_samples(server.url), "handserve_rebalanced_connections_total")

    conns = [http.client.HTTPConnection(host, port, timeout=30) for _ in range(CONNECTIONS)]
    workers[1].suspend()
    try:
        # until its load slot is stale: a worker sheds only to peers that publish
        time.sleep(balance.STALE_S + 0.3)
        for conn in conns:
            conn.request("POST", "/predict?model=tiny", body, headers)
            assert conn.getresponse().read()
    finally:
        workers[1].resume()

    # each client's local port, kept up to date by its thread (a closed one reconnects)
    ports = {i: conn.sock.getsockname()[1] for i, conn in enumerate(conns) if conn.sock}

    def distribution() -> list[int]:
        return [held(w, port, set(ports.values())) for w in workers]

    assert distribution() == [CONNECTIONS, 0], "the pile-up this test starts from"

    closes = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def client(i: int, conn: http.client.HTTPConnection) -> None:
        try:
            while not stop.is_set():
                conn.request("POST", "/predict?model=tiny", body, headers)
                if conn.sock is not None:
                    ports[i] = conn.sock.getsockname()[1]
                response = conn.getresponse()
                response.read()
                assert response.status == 200
                if (response.getheader("Connection") or "").lower() == "close":
                    closes.append(1)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [
        threading.Thread(target=client, args=(i, c), daemon=True) for i, c in enumerate(conns)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    seen: list[list[int]] = []
    try:
        while time.monotonic() < deadline and not errors:
            time.sleep(0.25)
            seen.append(distribution())
            if seen[-1] == [2, 2]:
                break
        time.sleep(3 * balance.TICK_S)  # each worker publishes what it holds now
        gauges = metric_samples(server.url)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        for conn in conns:
            conn.close()
    assert not errors, errors
    assert seen[-1] == [2, 2], f"connections per worker over time: {seen}"
    assert closes, "the busy worker closed none of its connections"
    after = total(metric_samples(server.url), "handserve_rebalanced_connections_total")
    assert after - before >= len(closes) >= 1
    # one series per worker process: each reports the two connections it holds
    # (and this scrape's own, on whichever worker took it)
    by_pid = {int(s.labels["pid"]): s.value for s in gauges["handserve_worker_connections"]}
    assert set(by_pid) == {w.pid for w in workers}
    assert all(2 <= value <= 3 for value in by_pid.values()), by_pid
    shares = [s.value for s in gauges["handserve_worker_cpu_share"]]
    assert len(shares) == 2 and all(share > 0.1 for share in shares), shares
