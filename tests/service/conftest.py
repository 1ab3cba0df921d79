"""Service fixtures: a models folder built from ``tiny_export`` and one real server per session.

The ``server`` fixture is shared by every real-server test (ours and the demo-page and
Prometheus tests) so the suite starts ``bentoml serve`` once. Its models folder holds the tiny
export as ``tiny``, a copy as ``digits`` (two models to choose from) and a copy with one byte
flipped as ``broken`` (must be refused while the others serve; ``digits`` is the configured
default, so requests that name no model are served). A warm-up delay makes the
not-ready window long enough to observe from the start of the process.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen

import pytest
import requests

from service.local_server import free_port, wait_ready
from tests.service.helpers import copy_version, corrupt, running_server

WARMUP_DELAY_S = 2.0
#: Short, so the stalled-client tests finish quickly (the default is 5 s).
BODY_TIMEOUT_S = 2.0


@dataclass
class Server:
    url: str
    models_dir: Path
    proc: Popen[bytes]
    log: Path
    grpc: str  # host:port of the Open Inference Protocol over gRPC
    # (seconds since process start, /readyz status or None if refused) polled from the start
    readiness: list[tuple[float, int | None]] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return self.url


@pytest.fixture(scope="session")
def service_models(tiny_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder: ``tiny`` (as exported), ``digits`` (a copy), ``broken`` (corrupted)."""
    models = tmp_path_factory.mktemp("service") / "models"
    shutil.copytree(tiny_export, models / "tiny" / tiny_export.name)
    copy_version(tiny_export, models, "digits", 2)
    corrupt(copy_version(tiny_export, models, "broken", 1))
    return models


def _poll_readiness(url: str, started: float, out: list, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            status: int | None = requests.get(url + "/readyz", timeout=1).status_code
        except requests.RequestException:
            status = None
        out.append((time.monotonic() - started, status))
        if status == 200:
            return
        time.sleep(0.05)


@pytest.fixture(scope="session")
def server(service_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One ``bentoml serve`` subprocess (LiteRT runtime) for the whole session."""
    home = tmp_path_factory.mktemp("bentoml_home")
    grpc_port = free_port()
    env = {
        "HANDSERVE_GRPC_PORT": str(grpc_port),
        "HANDSERVE_GRPC_HOST": "127.0.0.1",
        "HANDSERVE_RUNTIME": "litert",
        # Two worker processes wherever the suite runs (the default is one per core): the
        # readiness, reload and connection-balancing tests are about several workers.
        "HANDSERVE_WORKERS": "2",
        "HANDSERVE_WARMUP_DELAY_S": str(WARMUP_DELAY_S),
        # "broken" sorts first; requests that name no model go to the configured default
        "HANDSERVE_DEFAULT_MODEL": "digits",
        "HANDSERVE_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
    }
    with running_server(service_models, home, env) as (url, proc, started):
        log = next(home.glob("server-*.log"))
        srv = Server(url, service_models, proc, log, f"127.0.0.1:{grpc_port}")
        stop = threading.Event()
        poller = threading.Thread(
            target=_poll_readiness, args=(url, started, srv.readiness, stop), daemon=True
        )
        poller.start()
        try:
            wait_ready(url, proc, timeout=180)
            poller.join(5)
            yield srv
        finally:
            stop.set()
