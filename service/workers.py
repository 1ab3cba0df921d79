"""The folder the worker processes of one ``bentoml serve`` share: readiness marks, load board.

BentoML answers ``/readyz`` from whichever worker gets the request, and each worker loads its
models itself; the server is ready only when all are, so each marks itself ready here. The
connection balancing's load board (:mod:`service.balance`) is a file here too. The workers share
a parent (the ``bentoml serve`` process), so its PID names the folder; the last worker to stop
removes it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def server_dir() -> Path:
    """This server's shared folder (it may not exist yet)."""
    return Path(tempfile.gettempdir()) / f"handserve-ready-{os.getppid()}"


def mark_ready() -> None:
    """Say that this worker serves: its models are loaded and warm. Marks of workers that
    died (killed, crashed; the process manager restarts them) are removed on the way."""
    folder = server_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for mark in folder.glob("worker-*"):
        if not _alive(mark):
            mark.unlink(missing_ok=True)
    (folder / f"worker-{os.getpid()}").touch()


def ready_count() -> int:
    """How many workers of this server have marked themselves ready (a worker that died since
    still counts until a peer marks itself: the server was ready, and is again once the process
    manager has restarted it)."""
    return len(list(server_dir().glob("worker-*")))


def _alive(mark: Path) -> bool:
    try:
        os.kill(int(mark.name.removeprefix("worker-")), 0)
    except ProcessLookupError:
        return False
    except (ValueError, PermissionError):
        return True  # not ours to judge
    return True


def remove() -> None:
    """Remove the folder on shutdown (the load board's file with it)."""
    shutil.rmtree(server_dir(), ignore_errors=True)
