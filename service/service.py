"""The BentoML service: ``bentoml serve service.service:HandServe``.

Design (docs/service.md has the why):

* The public API is a Starlette app (:mod:`service.api`) mounted with ``@bentoml.asgi_app``:
  it parses the three input forms, decodes with the shared :func:`handserve.images.decode_image`
  and answers every refusal as JSON.
* BentoML only batches calls that pass through its HTTP dispatcher, so the front calls the
  batchable API ``infer`` through the service's own in-process client (``self.to_async``, an
  ASGI transport, no socket). What travels is a list of ticket numbers, not pixels: the
  decoded arrays stay in this worker's :class:`Tickets` and the batch function picks them up.
* Models load in a background task so ``/livez`` answers at once; ``__is_ready__`` makes
  ``/readyz`` 503 until every model is verified and warm and the dispatcher has been warmed.

Configuration comes from ``$HANDSERVE_CONFIG`` and ``HANDSERVE_*`` variables (read at import,
because BentoML's decorators need the batching and worker numbers).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from http import HTTPStatus
from typing import Any

import anyio
import bentoml
import numpy as np

from service import metrics as metrics_mod
from service.api import create_app
from service.config import load_service_config
from service.errors import ApiError
from service.registry import ModelRegistry, Pending

log = logging.getLogger("handserve.service")

CONFIG = load_service_config()


class Tickets:
    """Pending images of this worker by random ticket number (unguessable from outside)."""

    def __init__(self) -> None:
        self._items: dict[int, Pending] = {}
        self._lock = threading.Lock()

    def add(self, items: list[Pending]) -> list[int]:
        with self._lock:
            ids = []
            for item in items:
                tid = secrets.randbits(62)
                self._items[tid] = item
                ids.append(tid)
            return ids

    def get(self, ids: list[int]) -> list[Pending | None]:
        with self._lock:
            return [self._items.get(i) for i in ids]

    def drop(self, ids: list[int]) -> None:
        with self._lock:
            for i in ids:
                self._items.pop(i, None)


def _current() -> HandServe:
    return bentoml.get_current_service()


app = create_app(_current, CONFIG)


@bentoml.service(
    name="handserve",
    workers=CONFIG.workers,
    threads=CONFIG.threads,
    # No traffic.max_concurrency: it would count the in-process infer calls too and shed them;
    # admission control in service.api refuses beyond capacity instead.
    traffic={"timeout": CONFIG.timeout_s},
    logging={"access": {"enabled": CONFIG.access_log}},
    # The in-process client recycles its aiohttp session every max_requests calls and closes the
    # old one under in-flight calls ("Can not write request body" -> lost requests under load,
    # measured in BentoML 1.4.39). The session is in-process (no socket), so never recycle it.
    runner_connection={"max_requests": 2**31 - 1, "max_age": 10.0**9},
)
@bentoml.asgi_app(app, path="/")
class HandServe:
    """Image classification over REST: every model of the models folder, adaptively batched."""

    def __init__(self) -> None:
        self.cfg = CONFIG
        self.metrics = metrics_mod.create(CONFIG.max_batch_size)
        self.registry = ModelRegistry(CONFIG, self.metrics)
        self.tickets = Tickets()
        self._loader: asyncio.Task[None] | None = None

    @bentoml.on_startup
    async def _start_loading(self) -> None:
        """Load in the background: the server must accept /livez while models load."""
        self._loader = asyncio.get_running_loop().create_task(self._load())

    async def _load(self) -> None:
        try:
            await anyio.to_thread.run_sync(self.registry.load_all)
            await self._warm_dispatcher()
            if self.cfg.warmup_delay_s:
                await asyncio.sleep(self.cfg.warmup_delay_s)
            if not self.registry.models:
                # Ready with nothing to serve would send traffic to a useless replica.
                self.registry.load_error = "no model could be served"
                log.error(
                    "no model could be served from %s; /readyz stays 503", self.cfg.models_dir
                )
                return
            self.registry.mark_ready()
            log.info("ready")
        except Exception as exc:
            self.registry.load_error = repr(exc)
            log.exception("loading models failed; /readyz stays 503")

    async def _warm_dispatcher(self) -> None:
        """Send a dozen single-image calls through BentoML's dispatcher before going ready.

        Its optimizer dispatches its first ~12 calls one by one to fit a latency model; doing
        that here means real traffic is batched from its first request.
        """
        for _ in range(3):  # the in-process client is attached just after startup hooks
            if hasattr(self, "to_async"):
                break
            await asyncio.sleep(0.05)
        for model in self.registry.models.values():
            for _ in range(12):
                item = Pending(model, np.zeros(model.manifest.input.shape, np.uint8), warmup=True)
                await self.infer_items([item])

    def __is_ready__(self) -> bool:
        return self.registry.ready

    @property
    def backend(self) -> HandServe:
        return self

    async def infer(self, items: list[Pending]) -> None:  # the api.Backend interface
        await self.infer_items(items)

    async def infer_items(self, items: list[Pending]) -> None:
        ids = self.tickets.add(items)
        for item in items:
            item.enqueued = time.perf_counter()
        try:
            await self.to_async.run_tickets(ids)  # type: ignore[attr-defined]
        except Exception as exc:
            if getattr(exc, "error_code", None) == HTTPStatus.SERVICE_UNAVAILABLE:
                # BentoML's dispatcher shed the call: capacity, so the client should retry.
                log.warning("batch call refused: %s", exc)
                raise ApiError(
                    "overloaded",
                    "the batcher refused the request (overloaded); retry later",
                    headers={"Retry-After": str(self.cfg.retry_after_s)},
                ) from exc
            # Anything else is a fault, not load: retrying would not help, so say so.
            log.exception("batch call failed")
            raise ApiError("internal", "inference failed; see the server log") from exc
        finally:
            self.tickets.drop(ids)
        if any(item.scores is None for item in items):
            raise ApiError("internal", "the batch finished without scores for every image")

    @bentoml.api(
        batchable=True,
        max_batch_size=CONFIG.max_batch_size,
        max_latency_ms=CONFIG.max_latency_ms,
        route="/internal/run_tickets",
    )
    def run_tickets(self, tickets: list[int]) -> list[int]:
        """Batch function (internal): run the images behind these ticket numbers.

        Returns 1 per ticket that was found and run, 0 for an unknown ticket.
        """
        found = self.tickets.get(tickets)
        items = [p for p in found if p is not None]
        if items:
            self.registry.run_batch(items)
        return [0 if p is None else 1 for p in found]


__all__: list[Any] = ["HandServe", "app"]
