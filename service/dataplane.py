"""The data plane: what every protocol calls to answer an inference request.

REST's image API (``/predict``), BentoML's typed endpoints (``/classify``), the Open Inference
Protocol over REST (:mod:`service.v2_http`) and over gRPC (:mod:`service.v2_grpc`) parse their
own wire formats, then call the same five things here: :meth:`DataPlane.ready`,
:meth:`~DataPlane.resolve`, :meth:`~DataPlane.classify` (encoded images),
:meth:`~DataPlane.classify_tensors` (pixels at the model's input size) and
:meth:`~DataPlane.describe`. Behind them are the model registry (:mod:`service.registry`: which
version of which model is served), admission (a per-worker cap on images in flight) and the
engine (:mod:`service.inference`: LiteRT side by side, or adaptive batches for SavedModel).
KServe's ``DataPlane`` has the same role; nothing here knows HTTP, gRPC or BentoML, so the
protocol front ends stay thin and every protocol answers the same scores with the same limits
and metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import numpy as np

from handserve.hand_features import HandFeatureError
from handserve.images import decoded_pixels
from service import reload as model_reload
from service.config import ServiceConfig
from service.errors import ApiError
from service.inference import Admission, BatchingEngine, Engine, ParallelEngine
from service.registry import LoadedModel, ModelRegistry

log = logging.getLogger("handserve.dataplane")


class DataPlane:
    """The models of one worker process, and the only way requests reach them."""

    def __init__(self, cfg: ServiceConfig, metrics: Any) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.registry = ModelRegistry(cfg, metrics)
        self.admission = Admission(
            cfg.max_inflight_images, cfg.retry_after_s, cfg.max_inflight_pixels
        )
        self.engine: Engine | None = None  # chosen once the runtime is known (load)
        self._watcher: model_reload.ModelWatcher | None = None  # when reload is on
        #: How long a request that arrives while this plane loads waits for it, instead of
        #: 503 ``not_ready``: 0 on a cold start (the server is not ready; /readyz says so),
        #: the request timeout when the service restarts a worker of a server already serving.
        self.hold_while_loading_s = 0.0
        self._opened: asyncio.Event | None = None  # set once open; made on the event loop
        #: Whether the machine's other cores idle now; the service sets it where it knows
        #: (its workers' published load). LiteRT then runs single images on every core.
        self.spare_cores: Callable[[], bool] = lambda: False

    # ------------------------------------------------------------------ loading
    async def load(self) -> None:
        """Load, verify and warm every model of the models folder, choose the engine, and
        start watching the folder for new versions when reload is on.

        A bad model is refused (``describe`` says why) rather than raised; what raises is a
        failure of the whole folder or runtime, which keeps the worker unready. With reload on
        and no model yet (an empty volume), it returns once one has arrived.
        """
        await anyio.to_thread.run_sync(self.registry.load_all)
        self.engine = self._make_engine()
        if isinstance(self.engine, BatchingEngine):
            for model in self.registry.models.values():
                await self.engine.warm_up(model)
        if self.cfg.warmup_delay_s:
            await asyncio.sleep(self.cfg.warmup_delay_s)
        self._watcher = model_reload.start(self.registry, self.engine)
        if not self.registry.models and self._watcher is not None:
            await self._watcher.wait_for_models()  # an empty volume: serve what arrives

    async def stop(self) -> None:
        """Stop watching the models folder (requests in flight finish on their versions)."""
        if self._watcher is not None:
            await self._watcher.stop()

    def _make_engine(self) -> Engine:
        """Batching where it pays (SavedModel), parallel interpreters where it does not."""
        from handserve.runtimes import SavedModelRuntime

        if self.registry.runtime_name == SavedModelRuntime.name:
            return BatchingEngine(
                self.cfg.max_batch_size,
                self.cfg.max_latency_ms,
                self.cfg.max_pixels,
                self.metrics,
                retire_after_s=self.cfg.timeout_s,
            )
        return ParallelEngine(
            self.cfg.max_pixels, self.metrics, spare_cores=lambda: self.spare_cores()
        )

    def mark_ready(self) -> None:
        """Open the plane to requests (the service calls it once its own start-up is done)."""
        self.registry.mark_ready()
        if self._opened is not None:
            self._opened.set()

    def refuse_all(self, why: str) -> None:
        """Keep the plane closed: every request answers 503 ``not_ready`` with ``why``."""
        self.registry.load_error = why
        if self._opened is not None:
            self._opened.set()  # requests held while loading get their 503 now

    @property
    def ready(self) -> bool:
        """Every model of this worker is loaded and warm, and requests are let in."""
        return self.registry.ready and self.engine is not None

    @property
    def models(self) -> dict[str, LoadedModel]:
        """The served version of each model, by name."""
        return self.registry.models

    # ------------------------------------------------------------------ requests
    def check_ready(self) -> Engine:
        """The engine, once ready; before that, 503 ``not_ready`` with the reason.

        Protocols call this before reading a request body, so a loading server refuses at once.
        """
        if not self.registry.ready or self.engine is None:
            why = self.registry.load_error or "models are still loading"
            raise ApiError("not_ready", why, headers={"Retry-After": "1"})
        return self.engine

    async def wait_ready(self) -> Engine:
        """:meth:`check_ready`, but a request that arrives while a restarted worker loads waits
        for the load (at most ``hold_while_loading_s``) instead of being refused: the server was
        ready, and its other workers are, so the client should not see a 503 for it."""
        if self.ready or self.hold_while_loading_s <= 0 or self.registry.load_error:
            return self.check_ready()
        if self._opened is None:
            self._opened = asyncio.Event()
            if self.ready:  # opened between the check above and now
                self._opened.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._opened.wait(), self.hold_while_loading_s)
        return self.check_ready()

    def resolve(self, name: str | None, version: int | None) -> LoadedModel:
        """The served model a request names (None: the default model, the served version)."""
        self.check_ready()
        return self.registry.resolve(name, version)

    async def classify(self, model: LoadedModel, images: list[bytes]) -> np.ndarray:
        """Scores ``(len(images), num_classes)`` of encoded images, in order, decoded as the
        model's input contract says; ApiError names a bad image by its place.

        What the images will cost to decode is read from their headers first: a request over
        ``max_request_pixels`` is refused (413 ``too_many_request_pixels``) before any pixel
        is decoded, and admission counts those pixels.
        """
        engine = self.check_ready()
        spec = model.spec
        each = [decoded_pixels(image, spec) for image in images]
        pixels = sum(each)
        # An image over the per-image cap is refused by decoding, naming it (too_many_pixels);
        # the request's budget is for images that each pass.
        if pixels > self.cfg.max_request_pixels and max(each) <= self.cfg.max_pixels:
            raise ApiError(
                "too_many_request_pixels",
                f"the {len(images)} image(s) would decode to {pixels:,} pixels, over "
                f"max_request_pixels ({self.cfg.max_request_pixels:,}): send fewer or smaller "
                "images",
            )
        # Admission counts what will be decoded: an image over the per-image cap is refused
        # from its header and costs nothing, so it must not be refused as "overloaded" (503)
        # while another request is in flight, instead of too_many_pixels (413).
        admitted = sum(n for n in each if n <= self.cfg.max_pixels)
        return await self._admitted(
            len(images), admitted, functools.partial(engine.classify, model, images)
        )

    async def classify_tensors(self, model: LoadedModel, pixels: np.ndarray) -> np.ndarray:
        """Scores of images already at the model's input size ``(N, H, W, C)``."""
        engine = self.check_ready()
        n = len(pixels)
        area = int(np.prod(pixels.shape[1:3])) if pixels.ndim == 4 else 0
        return await self._admitted(
            n, n * area, functools.partial(engine.classify_pixels, model, pixels)
        )

    async def classify_landmarks(
        self, model: LoadedModel, tensors: dict[str, np.ndarray]
    ) -> np.ndarray:
        """Scores of one hand sent as MediaPipe's HandLandmarker reports it (a hand-feature
        head only): the same features the server makes from a photo, then the head."""
        engine = self.check_ready()
        if model.hands is None:
            raise ApiError(
                "bad_request",
                f"{model.name} takes images, not hand landmarks (its input is an image contract)",
            )
        try:
            features = model.hands.from_landmarks(tensors)
        except HandFeatureError as exc:
            raise ApiError("bad_request", str(exc)) from None
        return await self._admitted(
            1, 0, functools.partial(engine.classify_pixels, model, features)
        )

    async def _admitted(
        self, n: int, pixels: int, run: Callable[[], Awaitable[np.ndarray]]
    ) -> np.ndarray:
        """``run()`` for ``n`` images of ``pixels`` within the admission caps (503
        ``overloaded`` beyond either)."""
        self.admission.acquire(n, pixels)
        try:
            return await run()
        finally:
            self.admission.release(n, pixels)

    def describe(self) -> dict[str, Any]:
        """What is served (labels, input contract, runtime, files, export metrics) and what was
        refused, with the reason (``GET /models``)."""
        return self.registry.describe()
