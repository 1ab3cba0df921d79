"""A real ``bentoml serve`` of this service: a free port, its own process group, a sure stop.

The service tests (their third level: a real server, not the app in-process) and the serving
benchmarks (``benchmarks/serve_bench.py``, ``reliability.py``, ``serve_accuracy.py``) start the
same server the same way, so the code lives here, in the project both import, not in ``tests/``.
A server started here gets a session (process group) of its own and is stopped with SIGTERM to
that group, then SIGKILL to whatever of it (workers included) is left: a failed test or a
Ctrl-C'd benchmark leaves no server behind. Users start servers with ``handserve serve``
(:mod:`service.cli`); nothing in the service imports this module. It needs only the standard
library and psutil (a dependency of BentoML), so it imports wherever the service does.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import psutil

from service.cli import REPO, SERVICE

# Loopback only: a proxy from the environment (http_proxy) must not see the readiness probe.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serving(
    argv: list[str],
    *,
    env: dict[str, str],
    cwd: Path,
    log_path: Path,
    prefix: Sequence[str] = (),
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``argv --port PORT --host 127.0.0.1`` (a ``bentoml serve``) on a free loopback port, in
    its own process group, its output in ``log_path``; ``prefix`` runs it as another user.

    Yields the base URL and the process as soon as it is started (callers poll ``/readyz``
    with :func:`wait_ready`); on exit the server is stopped by :func:`stop_server`.
    """
    port = free_port()
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [*prefix, *argv, "--port", str(port), "--host", "127.0.0.1"],
            cwd=cwd,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield f"http://127.0.0.1:{port}", proc
        finally:
            stop_server(proc)


@contextlib.contextmanager
def background_server(
    models_dir: Path, log_path: Path, env_extra: dict[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The project's service (``bentoml serve``, :func:`serving`) on ``models_dir``, for tests
    and benchmarks, with this interpreter and this environment plus ``env_extra``."""
    env = dict(os.environ)
    env.update(
        {
            "HANDSERVE_MODELS_DIR": str(Path(models_dir).resolve()),
            "BENTOML_DO_NOT_TRACK": "true",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        }
    )
    env.update(env_extra or {})
    argv = [sys.executable, "-m", "bentoml", "serve", SERVICE]
    with serving(argv, env=env, cwd=REPO, log_path=log_path) as (url, proc):
        yield url, proc


def stop_server(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """SIGTERM a ``bentoml serve`` started in its own session, then kill what outlives it.

    The workers may sit in process groups of their own: they are noted before stopping, and
    each one still alive ``timeout`` seconds after the SIGTERM gets SIGKILL.
    """
    family: list[psutil.Process] = []
    with contextlib.suppress(psutil.Error):
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(True)]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    _, alive = psutil.wait_procs(family, timeout=timeout)
    for leftover in alive:
        with contextlib.suppress(psutil.Error):
            leftover.kill()
    proc.wait(5)


def wait_ready(
    url: str, proc: subprocess.Popen[bytes], timeout: float = 120, log_path: Path | None = None
) -> None:
    """Poll ``/readyz`` until 200; fail at once if the server process exits first.

    Raises:
        RuntimeError: the server exited; TimeoutError: not ready within ``timeout`` seconds.
        Either ends with the last lines of ``log_path`` when given (what the server said).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}{_tail(log_path)}")
        if answers_200(url + "/readyz"):
            return
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout}s{_tail(log_path)}")


def answers_200(url: str) -> bool:
    """Whether a GET of ``url`` answers 200 within 2 s (refused, reset or 503: not yet)."""
    try:
        with _DIRECT.open(url, timeout=2) as response:
            return int(response.status) == 200
    except urllib.error.HTTPError as answer:  # 503 while loading: an answer, closed here
        answer.close()
        return False
    except (OSError, http.client.HTTPException):  # refused, reset, timed out, cut short
        return False


def _tail(log_path: Path | None) -> str:
    if log_path is None or not log_path.is_file():
        return ""
    return ":\n" + log_path.read_text(errors="replace")[-4000:]
