"""Helpers for the service tests: copied versions, a real server, images, the app in-process."""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from handserve import artifacts, hands
from service.config import ServiceConfig
from service.local_server import background_server

#: Skips a test that needs MediaPipe's hand models when they are not fetched (make test does).
needs_hand_models = pytest.mark.skipif(
    not hands.models_available(),
    reason="MediaPipe's hand models are not fetched (scripts/fetch-hand-models.sh)",
)


def copy_version(src: Path, models_dir: Path, name: str, version: int | None = None) -> Path:
    """Copy a version folder under a new name, rewriting the manifest's name/version."""
    version = version or int(src.name)
    dst = Path(models_dir) / name / str(version)
    shutil.copytree(src, dst)
    man = artifacts.read_manifest(dst)
    data = man.to_dict()
    data["name"], data["version"] = name, version
    artifacts.write_manifest(dst, artifacts.Manifest.from_dict(data))
    return dst


def corrupt(version_dir: Path, file: str = "model.tflite") -> None:
    """Flip one byte in the middle of a file: the checksum no longer matches."""
    path = Path(version_dir) / file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def digit_png(seed: int = 0, size: int = 28, fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size, size), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


@contextlib.contextmanager
def running_server(
    models_dir: Path, home: Path, env_extra: dict[str, str] | None = None, timeout: float = 120
) -> Iterator[tuple[str, subprocess.Popen[bytes], float]]:
    """``bentoml serve`` on a free port; yields (base URL, process, start time)."""
    env = {"BENTOML_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "2", **(env_extra or {})}
    started = time.monotonic()
    log_path = Path(tempfile.mkstemp(prefix="server-", suffix=".log", dir=home)[1])
    with background_server(models_dir, log_path, env) as (url, proc):
        yield url, proc, started


@contextlib.contextmanager
def inprocess_client(
    cfg: ServiceConfig, *, load: bool = True, front: bool = True
) -> Iterator[tuple[Any, Any]]:
    """The service's FastAPI app driven in-process, with a service instance built for ``cfg``.

    With ``front`` (the default) requests go through the layer a server puts in front of the
    app (:class:`service.front.Front`: the image API's short path, the error shape and the
    deadline), as in ``bentoml serve``; without, straight to the FastAPI app.

    The instance is made as ``bentoml serve`` makes it (the class BentoML wraps) but with its
    own config and Prometheus registry, and started through its real start-up hook
    (``HandServe.start``: the gRPC port if asked for, the background load, the reload watcher).
    With ``load`` the client is yielded once loading has finished; without, before it starts,
    so the app answers as a server still loading.
    """
    from prometheus_client import CollectorRegistry
    from starlette.testclient import TestClient

    from service.front import Front
    from service.service import HandServe, app

    svc = HandServe.inner(cfg, CollectorRegistry())
    asgi = Front(app, service=lambda: svc, timeout_s=cfg.timeout_s) if front else app
    with TestClient(asgi) as client:
        if load:
            client.portal.call(svc.start)
            client.portal.call(svc.loaded)
        try:
            yield client, svc
        finally:
            if load:
                client.portal.call(svc.stop)


class Traffic:
    """Requests sent back to back from a thread while something changes under the server:
    every (status, served version) seen, and the bodies of any non-200 answer.

    ``send(i)`` makes the ``i``-th request."""

    def __init__(self, send: Callable[[int], requests.Response]) -> None:
        self.send = send
        self.seen = Counter[tuple[int, Any]]()
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            r = self.send(i)
            i += 1
            self.seen[(r.status_code, r.json().get("version"))] += 1
            if r.status_code != 200:
                self.errors.append(r.text)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


def predict_batch_scores(url: str, model: str, images: list[bytes]) -> np.ndarray:
    """``/predict_batch``'s answer for ``images`` as a score matrix: every class, in index
    order (the reference the protocol clients' answers are compared with)."""
    import requests

    files = [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    resp = requests.post(url + "/predict_batch", files=files, params={"model": model, "top_k": 999})
    resp.raise_for_status()
    rows = [r["predictions"] for r in resp.json()["results"]]
    scores = np.zeros((len(rows), len(rows[0])), np.float32)
    for i, row in enumerate(rows):
        for p in row:
            scores[i, p["index"]] = p["score"]
    return scores


def metric_samples(url: str) -> dict[str, list]:
    """Every sample of the server's ``/metrics`` (all workers merged), by sample name."""
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(url + "/metrics", timeout=30).text
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


def total(samples: dict[str, list], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(
        s.value
        for s in samples.get(name, [])
        if all(s.labels.get(k) == v for k, v in labels.items())
    )
