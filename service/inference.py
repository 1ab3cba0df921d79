"""From encoded images to scores: decode, then run the model the way its runtime pays.

Measured on 2 CPU cores (docs/benchmarks/serving.md and peers.md have the tables): LiteRT
gains little from batches on a CPU, so :class:`ParallelEngine` runs each request at once, side
by side with the other worker processes (one per core), on the event loop when the work is
small, and joins only the requests already waiting, for models that gain. TensorFlow
SavedModel, the GPU path, multiplies its throughput with batches (digits CNN: 930 to 4,700
images/s from batch 1 to 32), so :class:`BatchingEngine` joins concurrent requests into batches
with BentoML's adaptive batching dispatcher, in process.

Either way a request travels one way and gets its scores back as a return value:
``classify(model, blobs) -> scores``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import numpy as np

from handserve.hands import HandModelsMissing
from handserve.images import ImageDecodeError, decode_image
from handserve.runtimes import LiteRTRuntime, available_cpus
from service import deadline
from service.errors import ApiError
from service.registry import MAX_JOINED, LoadedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InlineLimits:
    """What may run on the event loop instead of a worker thread.

    A thread hand-off costs the loop 0.1-0.3 ms, and threads of one process contend for the
    GIL with the loop (measured: MobileNetV2 behind two threads of one process reached 0.6x
    the requests/s of the naive server; inline in one worker process per core, 0.9-1.5x).
    So small work runs inline. A photo of many megapixels or a long batch goes to a thread
    so it does not hold up the process's other requests. Pixels are checked from the image
    header before anything is decoded: a few kilobytes of PNG can hold a 6000x6000 flat image.
    """

    bytes: int  # encoded bytes of the request's images
    pixels: int  # decoded pixels of each image
    seconds: float = 0.0  # model time for the request's images (from the warm-up timing)


#: LiteRT workers: a process per core, so the loop may take real work (about 25 ms at most).
PARALLEL_INLINE = InlineLimits(bytes=1024 * 1024, pixels=1_000_000, seconds=0.025)
#: The batching engine's one process feeds a whole machine: only decodes that cost less than
#: a thread hand-off run on its loop.
BATCHING_INLINE = InlineLimits(bytes=16 * 1024, pixels=256 * 256)


class _TooBigForInline(Exception):
    """An image over the inline pixel cap: decode it again in a worker thread."""


class Engine(Protocol):
    """Runs images through a model; one per service, chosen by runtime."""

    kind: str

    async def classify(self, model: LoadedModel, blobs: list[bytes]) -> np.ndarray:
        """Scores ``(len(blobs), num_classes)`` in the order given; ApiError on bad images."""
        ...

    async def classify_pixels(self, model: LoadedModel, pixels: np.ndarray) -> np.ndarray:
        """Scores of images already at the model's input size (the v2 tensor input)."""
        ...


class Admission:
    """A per-worker cap on work admitted and not yet answered (a bounded queue): images, and
    the pixels they decode to (a few huge photos cost more than many small ones).

    Beyond either cap a request is refused at once with 503 and ``Retry-After`` rather than
    queued without bound: on 2 cores, 2,048 images are seconds of work already.
    """

    def __init__(self, capacity: int, retry_after_s: int, pixel_capacity: int = 2**62) -> None:
        self.capacity = capacity
        self.pixel_capacity = pixel_capacity
        self.retry_after_s = retry_after_s
        self.inflight = 0
        self.inflight_pixels = 0

    def acquire(self, n: int, pixels: int = 0) -> None:
        if self.inflight + n > self.capacity or (
            self.inflight_pixels and self.inflight_pixels + pixels > self.pixel_capacity
        ):
            raise ApiError(
                "overloaded",
                f"the server is at capacity ({self.inflight} images, "
                f"{self.inflight_pixels:,} pixels in flight); retry later",
                headers={"Retry-After": str(self.retry_after_s)},
            )
        self.inflight += n
        self.inflight_pixels += pixels

    def release(self, n: int, pixels: int = 0) -> None:
        self.inflight -= n
        self.inflight_pixels -= pixels


def decode_all(
    blobs: Sequence[bytes],
    model: LoadedModel,
    max_pixels: int,
    metrics: Any,
    *,
    inline: InlineLimits | None = None,
    offset: int = 0,
    request_images: int | None = None,
) -> np.ndarray:
    """Decode every image for ``model``; the error names the image within a batch request.

    ``blobs`` may be a part of a request's images, starting at ``offset`` of
    ``request_images``: errors name the image by its place in the request.

    With ``inline`` limits (on the event loop) a request over them raises
    :class:`_TooBigForInline`, an image over the pixel cap from its header, before any pixel
    is decoded.
    """
    if inline is not None and sum(len(b) for b in blobs) > inline.bytes:
        raise _TooBigForInline
    cap = min(max_pixels, inline.pixels) if inline is not None else max_pixels
    spec = model.spec
    hands = model.hands  # a hand-feature head: photo -> hand -> features, not pixels
    dtype = np.float32 if hands is not None else np.uint8
    out = np.empty((len(blobs), *model.manifest.input.shape), dtype)
    seconds = []
    for i, blob in enumerate(blobs):
        deadline.check()  # a request answered 504 already decodes nothing more
        t0 = time.perf_counter()
        try:
            if hands is not None:
                out[i] = hands.from_photo(blob, cap)[0]
            else:
                out[i] = decode_image(blob, spec, max_pixels=cap)
        except ImageDecodeError as exc:
            if exc.code == "too_many_pixels" and cap < max_pixels:
                raise _TooBigForInline from None
            many = (request_images or len(blobs)) > 1
            raise ApiError.from_decode(exc, offset + i if many else None) from None
        except HandModelsMissing as exc:  # a version that crops hands, on a server without them
            raise ApiError("model_unavailable", str(exc)) from None
        seconds.append(time.perf_counter() - t0)
    if metrics is not None:  # once all decoded: a retry in a thread must not count twice
        for value in seconds:
            metrics.preprocess_seconds.observe(value)
    return out


def record_batch(
    metrics: Any, model: LoadedModel, scores: np.ndarray, elapsed: float, waits: Sequence[float]
) -> None:
    """Metrics of one runtime call: its time, its size, each image's wait and top-1 label."""
    if metrics is None:
        return
    series = metrics.of(model.name, model.version_label, model.runtime.name)
    series.inference_seconds.observe(elapsed)
    series.batch_size.observe(len(scores))
    for wait in waits:
        metrics.batch_wait_seconds.observe(max(0.0, wait))
    names = model.manifest.labels
    for index in np.argmax(scores, axis=1):
        series.predicted(names[int(index)])


#: A single call shorter than this gains nothing from a second thread (the threads' hand-off
#: costs about what it saves); the digits CNN (0.21 ms) gains 0.08 ms.
WIDE_FROM_S = 0.0001

#: Turns of the event loop a joined call waits for more requests, while each turn brings one:
#: requests read in one turn reach the engine one or two turns apart (BentoML's timeout
#: middleware runs each in a task of its own), so the call waits while they keep coming.
JOIN_TURNS = 3


@dataclass
class _Waiting:
    """One decoded image waiting, on the event loop, for the joined call of its model."""

    image: np.ndarray
    enqueued: float
    answer: asyncio.Future[np.ndarray]


class ParallelEngine:
    """LiteRT on CPU: requests run side by side, one model call each, or joined when waiting.

    The parallelism is BentoML's worker processes, one per usable core by default, each with
    its own interpreter (threads of one process contend for the GIL). Within a worker a
    request is decoded and run on the event loop when that is quick (see
    :class:`InlineLimits`); otherwise in a worker thread, where the runtime's interpreter pool
    bounds how many model calls run at once.

    Requests queue in a worker while it runs a model call on its loop: at 8 clients and more
    several arrive together. For a model whose batches cost less per image (measured at
    warm-up, ``LoadedModel.joins``: MobileNetV2 at 160 px, 1.2x images per CPU-second at
    batch 2-8), the single images that reach the engine within a few turns of the event loop go
    through one call (of at most :data:`~service.registry.MAX_JOINED`), as Triton's dynamic
    batcher does with no added delay: the call waits only while each turn brings another
    request (at most :data:`JOIN_TURNS`), never for a timer; a request alone runs as before,
    two turns of the loop later (microseconds). A model whose batches gain nothing is never
    joined; the digits CNN gains 12-15% per image at batch 4 and is (7-13% less server CPU per
    request from 8 clients). A joined call stays within the loop's budget
    (``InlineLimits.seconds``): a slower model joins fewer.
    """

    kind = "parallel"

    def __init__(
        self,
        max_pixels: int,
        metrics: Any = None,
        inline: InlineLimits = PARALLEL_INLINE,
        spare_cores: Callable[[], bool] = lambda: False,
    ) -> None:
        self.max_pixels = max_pixels
        self.metrics = metrics
        self.inline = inline
        #: Whether the machine's other cores idle now (the other workers' published load):
        #: then a single image runs with a thread per core (:meth:`_call`).
        self.spare_cores = spare_cores
        self.wide_threads = available_cpus()
        #: (name, version) -> the model and the images waiting for its next joined call
        self._waiting: dict[tuple[str, int], tuple[LoadedModel, list[_Waiting]]] = {}

    def _run(
        self,
        model: LoadedModel,
        blobs: Sequence[bytes],
        enqueued: float,
        inline: InlineLimits | None = None,
        offset: int = 0,
        request_images: int | None = None,
    ) -> np.ndarray:
        started = time.perf_counter()
        x = decode_all(
            blobs,
            model,
            self.max_pixels,
            self.metrics,
            inline=inline,
            offset=offset,
            request_images=request_images,
        )
        return self._predict(model, x, enqueued, started)

    def _predict(
        self, model: LoadedModel, x: np.ndarray, enqueued: float, started: float | None = None
    ) -> np.ndarray:
        """One model call and its metrics; ``started`` is when the request's work began."""
        deadline.check()
        t0 = time.perf_counter()
        scores = self._call(model, x)
        wait = (t0 if started is None else started) - enqueued
        record_batch(self.metrics, model, scores, time.perf_counter() - t0, [wait] * len(x))
        return scores

    def _call(self, model: LoadedModel, x: np.ndarray) -> np.ndarray:
        """The model call: a single image on a thread per core while the other workers idle
        (one client at a time: 0.3 ms less a MobileNetV2 call on 2 cores), else on one of the
        worker's single-threaded interpreters."""
        runtime = model.runtime
        if (
            len(x) == 1
            and model.call_seconds >= WIDE_FROM_S
            and isinstance(runtime, LiteRTRuntime)
            and self.spare_cores()
        ):
            return runtime.predict_wide(x, self.wide_threads)
        return runtime.predict(x)

    async def classify_pixels(self, model: LoadedModel, pixels: np.ndarray) -> np.ndarray:
        """Like :meth:`classify` without decoding: inline when quick, else split over threads."""
        enqueued = time.perf_counter()
        if model.call_seconds * len(pixels) <= self.inline.seconds:
            return self._predict(model, pixels, enqueued)
        parts = min(len(pixels), model.runtime.instances)
        results = await asyncio.gather(
            *(
                anyio.to_thread.run_sync(self._predict, model, part, enqueued)
                for part in np.array_split(pixels, parts)
            )
        )
        return results[0] if parts == 1 else np.concatenate(results)

    async def classify(self, model: LoadedModel, blobs: list[bytes]) -> np.ndarray:
        enqueued = time.perf_counter()
        # A hand-feature head's photos go through the hand models first (tens of ms): never
        # on the event loop, whatever the head itself costs.
        if model.hands is None and model.call_seconds * len(blobs) <= self.inline.seconds:
            try:
                if len(blobs) == 1 and model.joins:
                    return await self._joined(model, blobs, enqueued)
                return self._run(model, blobs, enqueued, self.inline)
            except _TooBigForInline:
                pass
        # A long request is split over the worker's interpreters, each part in a thread: the
        # model calls release the GIL, so one request can use more than one core.
        parts = min(len(blobs), model.runtime.instances)
        if parts <= 1:
            return await anyio.to_thread.run_sync(self._run, model, blobs, enqueued)
        bounds = np.linspace(0, len(blobs), parts + 1).astype(int)
        # gather raises the first part's error as it is (an ApiError naming a bad image)
        results = await asyncio.gather(
            *(
                anyio.to_thread.run_sync(
                    self._run,
                    model,
                    blobs[bounds[i] : bounds[i + 1]],
                    enqueued,
                    None,
                    int(bounds[i]),
                    len(blobs),
                )
                for i in range(parts)
            )
        )
        return np.concatenate(results)

    async def _joined(self, model: LoadedModel, blobs: list[bytes], enqueued: float) -> np.ndarray:
        """Decode one image here, then wait for the next joined call of its model (made once a
        turn of the loop has passed with no request joining, or after JOIN_TURNS)."""
        x = decode_all(blobs, model, self.max_pixels, self.metrics, inline=self.inline)
        deadline.check()
        loop = asyncio.get_running_loop()
        key = (model.name, model.version)
        entry = self._waiting.get(key)
        if entry is None:
            entry = self._waiting[key] = (model, [])
            loop.call_soon(self._run_joined, key, 0, 0)
        answer: asyncio.Future[np.ndarray] = loop.create_future()
        entry[1].append(_Waiting(x[0], enqueued, answer))
        return await answer

    def _run_joined(self, key: tuple[str, int], turn: int, seen: int) -> None:
        """One call for the images waiting (at most MAX_JOINED, and what the loop's budget
        allows at the warm-up's call time; the rest get the next turn).

        A request that is no longer waiting (answered 504 at its deadline, or its client left:
        its task was cancelled) is left out. Calls are of 8, 4, 2 or 1 images, the sizes the
        runtime keeps interpreters for (3 images run as 2 + 1, not padded to 4).
        """
        model, waiting = self._waiting[key]
        most = min(MAX_JOINED, max(1, int(self.inline.seconds / max(model.call_seconds, 1e-6))))
        if seen < len(waiting) < most and turn < JOIN_TURNS:
            # others joined since the last turn: more are on their way through the stack
            asyncio.get_running_loop().call_soon(self._run_joined, key, turn + 1, len(waiting))
            return
        del self._waiting[key]
        waiting = [w for w in waiting if not w.answer.done()]
        if len(waiting) > most:
            rest = waiting[most:]
            waiting = waiting[:most]
            self._waiting[key] = (model, rest)
            asyncio.get_running_loop().call_soon(self._run_joined, key, JOIN_TURNS, 0)
        while waiting:
            size = 1 << (len(waiting).bit_length() - 1)  # the largest power of two that fits
            part, waiting = waiting[:size], waiting[size:]
            t0 = time.perf_counter()
            try:
                scores = self._call(model, np.stack([w.image for w in part]))
            except Exception as exc:
                for w in part:
                    if not w.answer.done():
                        w.answer.set_exception(exc)
                continue
            waits = [t0 - w.enqueued for w in part]
            record_batch(self.metrics, model, scores, time.perf_counter() - t0, waits)
            for w, row in zip(part, scores, strict=True):
                if not w.answer.done():
                    w.answer.set_result(row[None])


@dataclass
class _Item:
    """One decoded image waiting in the dispatcher's queue."""

    image: np.ndarray
    enqueued: float
    warmup: bool = False  # kept out of the metrics


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
        self,
        max_batch_size: int,
        max_latency_ms: int,
        max_pixels: int,
        metrics: Any = None,
        retire_after_s: float = 60.0,
    ) -> None:
        self.max_batch_size = max_batch_size
        self.max_latency_ms = max_latency_ms
        self.max_pixels = max_pixels
        self.metrics = metrics
        #: How long an older version's dispatcher lives on once a newer version has one: the
        #: requests already resolved to it finish (the server's request timeout bounds them).
        self.retire_after_s = retire_after_s
        # (name, version) -> (the batching callable, its CorkDispatcher)
        self._dispatchers: dict[tuple[str, int], tuple[Any, Any]] = {}

    def _dispatcher(self, model: LoadedModel) -> Any:
        key = (model.name, model.version)
        entry = self._dispatchers.get(key)
        if entry is None:
            # BentoML's public API batches only behind an HTTP route; the dispatcher is the
            # same one (handserve.adapters.bentoml: bentoml is pinned to 1.4.x).
            from handserve.adapters.bentoml import cork_dispatcher

            def overloaded() -> Any:
                raise ApiError(
                    "overloaded",
                    "the batcher could not finish in time (overloaded); retry later",
                    headers={"Retry-After": "1"},
                )

            dispatcher = cork_dispatcher(
                self.max_latency_ms, self.max_batch_size, overloaded, lambda item: 1
            )
            entry = self._dispatchers[key] = (dispatcher(self._batch_fn(model)), dispatcher)
            self._retire_older(model.name, model.version)
        return entry[0]

    def _retire_older(self, name: str, version: int) -> None:
        """Stop the dispatchers of older versions of ``name`` after ``retire_after_s``.

        A dispatcher holds its model (and a controller task) for as long as it exists, so
        without this every version a reloading server ever served stayed in memory.
        """
        loop = asyncio.get_running_loop()
        for key in [k for k in self._dispatchers if k[0] == name and k[1] < version]:

            def retire(key: tuple[str, int] = key) -> None:
                entry = self._dispatchers.pop(key, None)
                if entry is not None:
                    entry[1].shutdown()
                    log.info("stopped the batcher of %s/%d", *key)

            loop.call_later(self.retire_after_s, retire)

    def dispatched_versions(self, name: str) -> list[int]:
        """The versions of ``name`` that have a dispatcher now (for tests and debugging)."""
        return sorted(v for n, v in self._dispatchers if n == name)

    def _batch_fn(self, model: LoadedModel) -> Any:
        async def run_batch(items: Sequence[_Item]) -> list[np.ndarray]:
            started = time.perf_counter()
            x = np.stack([item.image for item in items])
            scores = await anyio.to_thread.run_sync(model.runtime.predict, x)
            if not all(item.warmup for item in items):
                waits = [started - item.enqueued for item in items]
                record_batch(self.metrics, model, scores, time.perf_counter() - started, waits)
            return list(scores)

        return run_batch

    async def classify(self, model: LoadedModel, blobs: list[bytes]) -> np.ndarray:
        try:
            x = decode_all(blobs, model, self.max_pixels, self.metrics, inline=BATCHING_INLINE)
        except _TooBigForInline:
            x = await anyio.to_thread.run_sync(
                decode_all, blobs, model, self.max_pixels, self.metrics
            )
        return await self.classify_pixels(model, x)

    async def classify_pixels(self, model: LoadedModel, pixels: np.ndarray) -> np.ndarray:
        """Each image a job of the dispatcher, joined into batches with other requests'."""
        x = pixels
        fn = self._dispatcher(model)
        now = time.perf_counter()
        if len(x) == 1:
            return np.stack([await fn(_Item(x[0], now))])
        return np.stack(await asyncio.gather(*(fn(_Item(image, now)) for image in x)))

    async def warm_up(self, model: LoadedModel, calls: int = 12) -> None:
        """Send single images through the dispatcher before going ready.

        Its optimizer dispatches its first dozen calls one by one to fit a latency model;
        doing that here means real traffic is batched from its first request.
        """
        fn = self._dispatcher(model)
        for _ in range(calls):
            image = np.zeros(model.manifest.input.shape, np.uint8)
            await fn(_Item(image, time.perf_counter(), warmup=True))
