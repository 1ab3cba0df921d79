"""KServe's peer in ``benchmarks/peers.py``: the kserve SDK's ``ModelServer`` serving one export.

    python benchmarks/peers_kserve.py VERSION_DIR PORT [WORKERS]

Written as KServe's docs write a custom Python predictor: a ``kserve.Model`` subclass whose
``load`` opens the model and whose synchronous ``predict`` answers the V1 protocol
(``POST /v1/models/NAME:predict`` with ``{"instances": [{"image": {"b64": ...}}]}``, the shape
of KServe's own image examples), served by ``ModelServer(workers=2)`` (one uvicorn process per
core, KServe's advice for a CPU model; a synchronous ``predict`` runs on each worker's event
loop, one request at a time). The model is ``benchmarks/peer_model.py``'s: handserve's decode,
the same LiteRT file, one thread per interpreter. Left as KServe ships it: its per-request
latency log line, its Prometheus histograms and its middlewares. Changed: gRPC is off (only REST
is measured), the socket binds 127.0.0.1 (kserve 0.21 writes ``host="0.0.0.0"`` into
uvicorn's config; one wrapper of ``RESTServer.__init__`` sets it back), and the parent's watchdog
waits up to 120 s, not 5, for a worker's first answer to its ping: a spawned worker imports kserve
before it can answer, which took 12 s on the shared, loaded machine here (3 s of CPU), so KServe
killed and respawned its workers forever.
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path
from typing import Any

import kserve
from kserve.protocol.rest import server as rest_server
from kserve.protocol.rest.multiprocess import server as multiprocess_server

from benchmarks.peer_model import LiteRTClassifier


class KServeClassifier(kserve.Model):
    """One export behind KServe's V1 predict; each worker process opens its own interpreter
    (``ModelServer`` pickles the model into its spawned workers, and an interpreter cannot be
    pickled, so it is dropped and reopened on the other side)."""

    def __init__(self, name: str, version_dir: Path | str) -> None:
        super().__init__(name)
        self.version_dir = Path(version_dir)
        self.model: LiteRTClassifier | None = None
        self.load()

    def load(self) -> bool:
        self.model = LiteRTClassifier(self.version_dir, num_threads=1)
        self.ready = True
        return self.ready

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["model"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.load()

    def predict(  # KServe calls a synchronous predict directly
        self, payload: dict[str, Any], headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        assert self.model is not None  # load() ran in __init__ or __setstate__
        blobs = [base64.b64decode(inst["image"]["b64"]) for inst in payload["instances"]]
        return {"predictions": self.model.classify(blobs)}


def bind_loopback() -> None:
    """Make kserve's REST server listen on 127.0.0.1 instead of every address."""
    init = rest_server.RESTServer.__init__
    if getattr(init, "loopback", False):
        return

    def loopback_init(self: rest_server.RESTServer, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.config.host = "127.0.0.1"

    loopback_init.loopback = True  # type: ignore[attr-defined]
    rest_server.RESTServer.__init__ = loopback_init


def patient_watchdog(timeout_s: float = 120.0) -> None:
    """Give KServe's worker watchdog ``timeout_s`` for each ping instead of 5 s."""
    worker = multiprocess_server.RESTServerProcess
    is_alive = worker.is_alive
    if getattr(is_alive, "patient", False):
        return

    def patient_is_alive(self: Any, timeout: float = timeout_s) -> bool:
        return is_alive(self, timeout)

    patient_is_alive.patient = True  # type: ignore[attr-defined]
    worker.is_alive = patient_is_alive


def main(argv: list[str]) -> None:
    version_dir, port = Path(argv[0]), int(argv[1])
    workers = int(argv[2]) if len(argv) > 2 else 2
    name = version_dir.parent.name
    bind_loopback()
    patient_watchdog()
    kserve.ModelServer(http_port=port, workers=workers, enable_grpc=False).start(
        [KServeClassifier(name, version_dir)]
    )


if __name__ == "__main__":
    main(sys.argv[1:])
