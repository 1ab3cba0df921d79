"""From encoded images to scores: decode, then run the model the way its runtime pays.

Measured on 2 CPU cores (docs/service.md has the tables): LiteRT gains nothing from batches
on a CPU, so :class:`ParallelEngine` runs each request at once on a free interpreter of the
runtime's pool, decoding in the same worker thread (one thread hand-off per request).
TensorFlow SavedModel, the GPU path, multiplies its throughput with batches (digits CNN: 930 to
4,700 images/s from batch 1 to 32), so :class:`BatchingEngine` joins concurrent requests into
batches with BentoML's adaptive batching dispatcher, in process.

Either way a request travels one way and gets its scores back as a return value:
``classify(model, blobs) -> scores``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import numpy as np

from handserve.images import ImageDecodeError, decode_image
from service.errors import ApiError
from service.registry import LoadedModel

log = logging.getLogger(__name__)

#: Work this small runs on the event loop instead of in a worker thread: a thread hand-off
#: costs the loop about 0.1-0.3 ms (measured), more than decoding a small PNG (~0.07 ms) or
#: running the digits CNN once (~0.15 ms). Bigger models and photos go to threads, so a slow
#: call never stalls the other requests. The pixel cap is checked from the image header
#: before decoding: a few kilobytes of PNG can hold a 6000x6000 flat image.
INLINE_DECODE_BYTES = 16 * 1024
INLINE_DECODE_PIXELS = 256 * 256
INLINE_CALL_SECONDS = 0.0005


class _TooBigForInline(Exception):
    """An image over the inline pixel cap: decode it again in a worker thread."""


class Engine(Protocol):
    """Runs images through a model; one per service, chosen by runtime."""

    kind: str

    async def classify(self, model: LoadedModel, blobs: list[bytes]) -> np.ndarray:
        """Scores ``(len(blobs), num_classes)`` in the order given; ApiError on bad images."""
        ...


class Admission:
    """A per-worker cap on images admitted and not yet answered (a bounded queue).

    Beyond the cap a request is refused at once with 503 and ``Retry-After`` rather than
    queued without bound: on 2 cores, 2,048 images are seconds of work already.
    """

    def __init__(self, capacity: int, retry_after_s: int) -> None:
        self.capacity = capacity
        self.retry_after_s = retry_after_s
        self.inflight = 0

    def acquire(self, n: int) -> None:
        if self.inflight + n > self.capacity:
            raise ApiError(
                "overloaded",
                f"the server is at capacity ({self.inflight} images in flight); retry later",
                headers={"Retry-After": str(self.retry_after_s)},
            )
        self.inflight += n

    def release(self, n: int) -> None:
        self.inflight -= n


def decode_all(
    blobs: Sequence[bytes],
    model: LoadedModel,
    max_pixels: int,
    metrics: Any,
    *,
    inline: bool = False,
) -> np.ndarray:
    """Decode every image for ``model``; the error names the image within a batch request.

    With ``inline`` (on the event loop) an image over :data:`INLINE_DECODE_PIXELS` raises
    :class:`_TooBigForInline` from its header, before any pixel is decoded.
    """
    if inline and sum(len(b) for b in blobs) > INLINE_DECODE_BYTES:
        raise _TooBigForInline
    cap = min(max_pixels, INLINE_DECODE_PIXELS) if inline else max_pixels
    spec = model.spec
    out = np.empty((len(blobs), *model.manifest.input.shape), np.uint8)
    for i, blob in enumerate(blobs):
        t0 = time.perf_counter()
        try:
            out[i] = decode_image(blob, spec, max_pixels=cap)
        except ImageDecodeError as exc:
            if inline and exc.code == "too_many_pixels" and cap < max_pixels:
                raise _TooBigForInline from None
            raise ApiError.from_decode(exc, i if len(blobs) > 1 else None) from None
        if metrics is not None:
            metrics.preprocess_seconds.observe(time.perf_counter() - t0)
    return out


def record_batch(
    metrics: Any, model: LoadedModel, scores: np.ndarray, elapsed: float, waits: Sequence[float]
) -> None:
    """Metrics of one runtime call: its time, its size, each image's wait and top-1 label."""
    if metrics is None:
        return
    labels = (model.name, model.version_label)
    metrics.inference_seconds.labels(*labels, model.runtime.name).observe(elapsed)
    metrics.batch_size.labels(model.name).observe(len(scores))
    for wait in waits:
        metrics.batch_wait_seconds.observe(max(0.0, wait))
    names = model.manifest.labels
    for index in np.argmax(scores, axis=1):
        metrics.predictions.labels(*labels, names[int(index)]).inc()


class ParallelEngine:
    """LiteRT on CPU: each request runs at once, decode and model call in one worker thread.

    At most ``workers`` requests run at a time (the interpreter pool's size, one per core);
    the rest wait their turn on the event loop, not in threads. A multi-image request is split
    across the pool so its images use every core.
    """

    kind = "parallel"

    def __init__(self, workers: int, max_pixels: int, metrics: Any = None) -> None:
        self.workers = max(1, workers)
        self.max_pixels = max_pixels
        self.metrics = metrics
        self._limiter = anyio.CapacityLimiter(self.workers)

    def _run(
        self, model: LoadedModel, blobs: Sequence[bytes], enqueued: float, inline: bool = False
    ) -> np.ndarray:
        started = time.perf_counter()
        x = decode_all(blobs, model, self.max_pixels, self.metrics, inline=inline)
        t0 = time.perf_counter()
        scores = model.runtime.predict(x)
        record_batch(
            self.metrics, model, scores, time.perf_counter() - t0, [started - enqueued] * len(x)
        )
        return scores

    async def classify(self, model: LoadedModel, blobs: list[bytes]) -> np.ndarray:
        enqueued = time.perf_counter()
        if model.call_seconds * len(blobs) < INLINE_CALL_SECONDS:
            try:
                return self._run(model, blobs, enqueued, inline=True)
            except _TooBigForInline:
                pass
        parts = min(self.workers, len(blobs))
        if parts <= 1:
            return await anyio.to_thread.run_sync(
                self._run, model, blobs, enqueued, limiter=self._limiter
            )
        bounds = np.linspace(0, len(blobs), parts + 1).astype(int)
        results: list[np.ndarray | None] = [None] * parts

        async def part(i: int) -> None:
            chunk = blobs[bounds[i] : bounds[i + 1]]
            results[i] = await anyio.to_thread.run_sync(
                self._run, model, chunk, enqueued, limiter=self._limiter
            )

        async with anyio.create_task_group() as tg:
            for i in range(parts):
                tg.start_soon(part, i)
        return np.concatenate([r for r in results if r is not None])


@dataclass
class _Item:
    """One decoded image waiting in the dispatcher's queue."""

    image: np.ndarray
    enqueued: float


class BatchingEngine:
    """SavedModel (TensorFlow, the GPU path): concurrent requests joined into adaptive batches.

    Uses BentoML's own adaptive batching dispatcher (``CorkDispatcher``, what ``@bentoml.api(
    batchable=True)`` runs behind its HTTP route) directly in this process, one per model: no
    internal route, no second process, no serialization. While one batch runs, the next
    forms from the requests that arrive; the dispatcher decides when to stop waiting from the
    batch times it measures. Each image is its own job so a batch never splits a request's
    array; the scores come back through the job's future.
    """

    kind = "batching"

    def __init__(
        self, max_batch_size: int, max_latency_ms: int, max_pixels: int, metrics: Any = None
    ) -> None:
        self.max_batch_size = max_batch_size
        self.max_latency_ms = max_latency_ms
        self.max_pixels = max_pixels
        self.metrics = metrics
        self._dispatchers: dict[tuple[str, int], Any] = {}

    def _dispatcher(self, model: LoadedModel) -> Any:
        key = (model.name, model.version)
        fn = self._dispatchers.get(key)
        if fn is None:
            # BentoML's public API batches only behind an HTTP route; the dispatcher class is
            # the same one, imported from its module (bentoml is pinned to 1.4.x).
            from bentoml._internal.marshal.dispatcher import CorkDispatcher

            def overloaded() -> Any:
                raise ApiError(
                    "overloaded",
                    "the batcher could not finish in time (overloaded); retry later",
                    headers={"Retry-After": "1"},
                )

            dispatcher = CorkDispatcher(
                max_latency_in_ms=self.max_latency_ms,
                max_batch_size=self.max_batch_size,
                fallback=overloaded,
                get_batch_size=lambda item: 1,
            )
            fn = self._dispatchers[key] = dispatcher(self._batch_fn(model))
        return fn

    def _batch_fn(self, model: LoadedModel) -> Any:
        async def run_batch(items: Sequence[_Item]) -> list[np.ndarray]:
            started = time.perf_counter()
            x = np.stack([item.image for item in items])
            scores = await anyio.to_thread.run_sync(model.runtime.predict, x)
            waits = [started - item.enqueued for item in items]
            record_batch(self.metrics, model, scores, time.perf_counter() - started, waits)
            return list(scores)

        return run_batch

    async def classify(self, model: LoadedModel, blobs: list[bytes]) -> np.ndarray:
        try:
            x = decode_all(blobs, model, self.max_pixels, self.metrics, inline=True)
        except _TooBigForInline:
            x = await anyio.to_thread.run_sync(
                decode_all, blobs, model, self.max_pixels, self.metrics
            )
        fn = self._dispatcher(model)
        now = time.perf_counter()
        results: list[np.ndarray | None] = [None] * len(x)

        async def one(i: int) -> None:
            results[i] = await fn(_Item(x[i], now))

        async with anyio.create_task_group() as tg:
            for i in range(len(x)):
                tg.start_soon(one, i)
        return np.stack([r for r in results if r is not None])

    async def warm_up(self, model: LoadedModel, calls: int = 12) -> None:
        """Send single images through the dispatcher before going ready.

        Its optimizer dispatches its first dozen calls one by one to fit a latency model;
        doing that here means real traffic is batched from its first request.
        """
        fn = self._dispatcher(model)
        for _ in range(calls):
            await fn(_Item(np.zeros(model.manifest.input.shape, np.uint8), time.perf_counter()))
