"""The server helper (service/local_server.py) without BentoML: readiness polling against a stub
HTTP server, and the stop that leaves nothing behind, on stand-in processes.

The real ``bentoml serve`` it starts is exercised by the server tests in tests/service; these
pin the parts a server test would only notice as a hang or a leaked process.
"""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from service.local_server import serving, stop_server, wait_ready


@pytest.fixture
def readyz() -> Iterator[tuple[str, list[int]]]:
    """A loopback HTTP server whose ``/readyz`` answers 503 twice, then 200; yields its URL and
    the statuses it sent."""
    sent: list[int] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status = 200 if len(sent) >= 2 else 503
            sent.append(status)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:  # quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", sent
    finally:
        server.shutdown()
        server.server_close()


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_wait_ready_waits_through_503_and_ignores_proxies(
    readyz: tuple[str, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, sent = readyz
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # nothing listens there
    proc = _sleeper()
    try:
        wait_ready(url, proc, timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert sent == [503, 503, 200]


def test_wait_ready_fails_at_once_with_the_log_when_the_server_exits(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("Error: no model to serve\n")
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    with pytest.raises(RuntimeError, match=r"exited with 3:\nError: no model to serve"):
        wait_ready("http://127.0.0.1:9", proc, timeout=60, log_path=log)


def test_wait_ready_times_out_naming_the_url(readyz: tuple[str, list[int]]) -> None:
    url, sent = readyz
    proc = _sleeper()
    try:
        with pytest.raises(TimeoutError, match="not ready after 0s"):
            wait_ready(url, proc, timeout=0)
    finally:
        proc.kill()
        proc.wait()
    assert sent == []


def test_serving_passes_a_loopback_port_and_stops_the_server(tmp_path: Path) -> None:
    script = "import sys, time; print(' '.join(sys.argv[1:]), flush=True); time.sleep(60)"
    log = tmp_path / "server.log"
    argv = [sys.executable, "-c", script, "serve", "svc"]
    with serving(argv, env={}, cwd=tmp_path, log_path=log) as (url, proc):
        port = url.rpartition(":")[2]
        assert url == f"http://127.0.0.1:{port}"
        _until(lambda: log.read_text() != "")
        assert proc.poll() is None
    assert log.read_text().split() == ["serve", "svc", "--port", port, "--host", "127.0.0.1"]
    assert proc.returncode is not None  # stopped and reaped when the block ends


def test_stop_server_kills_workers_that_left_its_group_and_ignore_sigterm(
    tmp_path: Path,
) -> None:
    """A worker in a session of its own, deaf to SIGTERM, is still found and killed."""
    pid_file = tmp_path / "worker.pid"
    worker = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    parent = (
        "import subprocess, sys, time\n"
        f"w = subprocess.Popen([sys.executable, '-c', {worker!r}], start_new_session=True)\n"
        f"open({str(pid_file)!r}, 'w').write(str(w.pid))\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], start_new_session=True)
    _until(lambda: pid_file.is_file() and pid_file.read_text() != "")
    worker_pid = int(pid_file.read_text())
    assert _alive(worker_pid)
    stop_server(proc, timeout=1)
    assert proc.returncode is not None
    _until(lambda: not _alive(worker_pid))


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for a parent (which a container's PID 1 may never reap)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _until(condition: Callable[[], bool], limit: float = 30) -> None:
    """Poll ``condition`` until it holds; fail after ``limit`` seconds (a bound, not a timing)."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.05)
