"""A real ``bentoml serve`` for tests and benchmarks: a free port, a process group, a sure stop.

Used by the service tests (``tests/service/helpers.py``) and by ``benchmarks/serve_bench.py``
and ``benchmarks/reliability.py``; not part of the package, which only needs ``handserve serve``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import requests

from service.cli import REPO, SERVICE


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

    Yields the base URL and the process as soon as it is started (callers poll ``/readyz``);
    on exit the server gets SIGTERM (it stops its workers), and whatever of it is left, workers
    included, SIGKILL after 15 s.
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

    The workers may sit in process groups of their own: they are noted before stopping.
    """
    import psutil

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
    """Poll ``/readyz`` until 200; fail at once if the server process exits first. The error
    ends with the last lines of ``log_path`` when given (what the server said)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}{_tail(log_path)}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(url + "/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout}s{_tail(log_path)}")


def _tail(log_path: Path | None) -> str:
    if log_path is None or not log_path.is_file():
        return ""
    return ":\n" + log_path.read_text(errors="replace")[-4000:]
