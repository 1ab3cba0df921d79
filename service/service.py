"""The BentoML service: ``bentoml serve service.service:HandServe``.

Every public endpoint is a route declared on the :class:`HandServe` class below (FastAPI,
mounted with ``@bentoml.asgi_app``; :mod:`service.routes` binds them to the running instance),
and the OpenAPI document comes from the types in :mod:`service.schemas`. A predict request
travels one way and each step returns its result to the caller:

    parse (service.parsing) -> resolve the model (service.registry) -> admit
        -> decode and run (service.inference: LiteRT side by side, one worker process per
           core; or BentoML's adaptive batching for TensorFlow SavedModel) -> answer

Models load in a background task so ``/livez`` answers at once; ``__is_ready__`` makes
``/readyz`` 503 until every model is verified and warm in every worker. Configuration comes from
``$HANDSERVE_CONFIG`` and ``HANDSERVE_*`` variables (read at import, because BentoML's
decorator needs the worker numbers); docs/service.md has the why of each choice.

At a little over 400 lines this module is longer than the others on purpose: every public
endpoint, the image API's and the Open Inference Protocol's (:mod:`service.v2`), is declared
here with its docstring, so one file answers "what does this server answer".
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any

import anyio
import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException
from bentoml.validators import ContentType
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles

import handserve
from handserve.ranking import top_k
from handserve.runtimes import SavedModelRuntime, available_cpus, choose_runtime_name
from service import balance, bento_guard, connections, v2, v2_wire
from service import metrics as metrics_mod
from service import reload as model_reload
from service.config import ServiceConfig, load_service_config
from service.errors import (
    STATUS,
    ApiError,
    JSONErrors,
    count_rejected,
    install_error_handlers,
    is_input_error,
    v2_error,
)
from service.inference import Admission, BatchingEngine, Engine, ParallelEngine
from service.parsing import parse_params, parse_request, read_body
from service.registry import LoadedModel, ModelRegistry
from service.routes import ClassRoutes
from service.schemas import (
    ErrorResponse,
    ModelName,
    PositiveInt,
    PredictBatchResponse,
    PredictResponse,
    predict_openapi,
)

log = logging.getLogger("handserve.service")

# `bentoml build` imports this module to read the service definition, the only moment a build
# runs project code: a Bento with nothing to serve is refused here, unless
# HANDSERVE_ALLOW_EMPTY_BENTO is set (service/bento_guard.py). Anywhere else it does nothing.
bento_guard.refuse_empty_build()

# Read at import because BentoML's decorator below takes the worker count, threads and timeout
# as arguments; __init__ reads nothing more from here than these.
CONFIG = load_service_config()
# Slow clients are cut off in every worker (service.connections): installed before BentoML's
# worker starts uvicorn, which it does after importing this module.
connections.install(CONFIG.header_timeout_s, CONFIG.keep_alive_timeout_s)
# Decided from the device node alone: the `bentoml serve` process imports this module too and
# must not load TensorFlow just to count its workers.
RUNTIME = choose_runtime_name(CONFIG.runtime, import_tensorflow=False)
#: LiteRT: a worker process per usable core (each runs its own requests); SavedModel: one
#: process whose batches use the whole machine (or the GPU).
WORKERS = CONFIG.workers or (1 if SavedModelRuntime.name == RUNTIME else available_cpus())
#: Keep-alive connections are balanced between workers (service.balance) only where there are
#: several; otherwise not even its middleware runs.
BALANCING = CONFIG.rebalance and WORKERS > 1
STATIC_DIR = Path(__file__).parent / "static"

app = FastAPI(
    title="handserve",
    # BentoML serves the merged OpenAPI document and Swagger page; FastAPI's would clash.
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
)

#: One OpenAPI response per status the API can refuse with, listing its error codes.
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {
        "model": ErrorResponse,
        "description": "error codes: "
        + ", ".join(c for c, s in sorted(STATUS.items()) if s == status),
    }
    for status in sorted(set(STATUS.values()))
}

#: The routes declared on HandServe's methods; bound to the running instance below the class.
routes = ClassRoutes()


@bentoml.service(
    name="handserve",
    workers=WORKERS,
    threads=CONFIG.threads,
    traffic={"timeout": CONFIG.timeout_s},
    tracing={"excluded_urls": "predict,predict_batch,infer"},
    logging={"access": {"enabled": CONFIG.access_log}},
)
@bentoml.asgi_app(app, path="/")
class HandServe:
    """Image classification over REST: every model of the models folder, verified and warm."""

    def __init__(self, cfg: ServiceConfig | None = None, metrics_registry: Any = None) -> None:
        """BentoML calls this with no arguments; in-process tests pass their own config and
        Prometheus registry (metrics may be registered once per registry)."""
        self.cfg = cfg or CONFIG
        self.metrics = metrics_mod.create(self.cfg.max_batch_size, metrics_registry)
        self.registry = ModelRegistry(self.cfg, self.metrics)
        self.admission = Admission(self.cfg.max_inflight_images, self.cfg.retry_after_s)
        self.engine: Engine | None = None  # chosen once the runtime is known
        self._loader: asyncio.Task[None] | None = None
        self._watcher: model_reload.ModelWatcher | None = None  # new versions, when reload is on
        self._all_ready = False
        self._grpc: Any = None  # the Open Inference Protocol's gRPC server, when grpc_port is set
        #: This worker's side of the connection balancing (service.balance); None with one
        #: worker, with `rebalance` off, or outside `bentoml serve` (in-process tests).
        self.balancer: balance.ConnectionBalancer | None = None
        self._balancing: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle
    @bentoml.on_startup
    async def _start_loading(self) -> None:
        """Load in the background: the server must accept /livez (and gRPC's ServerLive)
        while models load."""
        if self.cfg.grpc_port:
            await self._start_grpc()
        self._start_balancing()
        self._loader = asyncio.get_running_loop().create_task(self.load())

    def _start_balancing(self) -> None:
        """Publish this worker's load and shed connections while a peer idles (service.balance)."""
        index = bentoml.server_context.worker_index  # 1-based; None outside `bentoml serve`
        if not BALANCING or index is None:
            return
        try:
            folder = _server_dir()
            folder.mkdir(mode=0o700, exist_ok=True)
            board = balance.LoadBoard(folder / "load", WORKERS, index - 1)
        except (OSError, ValueError) as exc:  # serving goes on; connections stay where they land
            log.warning("connection balancing is off in this worker: %s", exc)
            return

        def publish(cpu_share: float, connections: int) -> None:
            self.metrics.worker_cpu.set(cpu_share)
            self.metrics.worker_connections.set(connections)

        self.balancer = balance.ConnectionBalancer(
            board, on_shed=self.metrics.rebalanced.inc, on_tick=publish
        )
        self._balancing = asyncio.get_running_loop().create_task(self.balancer.run())

    async def _start_grpc(self) -> None:
        """The gRPC port of this worker; one that cannot listen keeps the server unready."""
        from service import v2_grpc  # grpc is imported only by servers that use it

        backend = v2_grpc.Backend(
            is_ready=self.__is_ready__,
            resolve=self._v2_resolve,
            metadata=self._v2_metadata,
            scores=self._v2_scores,
            max_images=self.cfg.max_batch_images,
            max_message_bytes=self.cfg.max_body_bytes,
            metrics=self.metrics,
            version=handserve.__version__,
        )
        try:
            self._grpc = await v2_grpc.start(backend, self.cfg.grpc_host, self.cfg.grpc_port)
        except (OSError, RuntimeError) as exc:
            self.registry.load_error = f"gRPC port {self.cfg.grpc_port}: {exc}"
            log.error("%s; /readyz stays 503", self.registry.load_error)

    async def load(self) -> None:
        """Load, verify and warm every model, pick the engine, then turn ready."""
        try:
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
            if self.cfg.grpc_port and self._grpc is None:
                return  # the gRPC port was asked for and could not listen (logged)
            if not self.registry.models:
                # Ready with nothing to serve would send traffic to a useless replica.
                self.registry.load_error = "no model could be served"
                log.error(
                    "no model could be served from %s; /readyz stays 503", self.cfg.models_dir
                )
                return
            # Everything allocated so far (libraries, models) lives as long as the process:
            # moved out of the collector's reach, a full collection no longer walks it. Before
            # this, gen-2 collections stalled the event loop for ~130 ms about once a second
            # under load (a p99 of 160 ms where p95 was 60 ms, digits at concurrency 64).
            gc.collect()
            gc.freeze()
            self.registry.mark_ready()
            self._mark_worker_ready()
            log.info("ready (%s engine)", self.engine.kind)
        except Exception as exc:
            self.registry.load_error = f"loading models failed: {type(exc).__name__}"
            log.exception("loading models failed; /readyz stays 503")

    def _make_engine(self) -> Engine:
        """Batching where it pays (SavedModel), parallel interpreters where it does not."""
        if self.registry.runtime_name == SavedModelRuntime.name:
            return BatchingEngine(
                self.cfg.max_batch_size,
                self.cfg.max_latency_ms,
                self.cfg.max_pixels,
                self.metrics,
                retire_after_s=self.cfg.timeout_s,
            )
        return ParallelEngine(self.cfg.max_pixels, self.metrics)

    def __is_ready__(self) -> bool:
        """Ready when every worker process of this server is: any of them may get a request.
        A worker that lost every model (its versions removed from disk) is not."""
        if not self.registry.ready:
            return False
        if self._all_ready:
            return True
        self._all_ready = len(list(_server_dir().glob("worker-*"))) >= WORKERS
        return self._all_ready

    def _mark_worker_ready(self) -> None:
        folder = _server_dir()
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"worker-{os.getpid()}").touch()

    @bentoml.on_shutdown
    async def _unmark_worker(self) -> None:
        import shutil

        if self._watcher is not None:
            await self._watcher.stop()
        if self._grpc is not None:
            await self._grpc.stop(grace=5)
        if self._balancing is not None:
            self._balancing.cancel()
        shutil.rmtree(_server_dir(), ignore_errors=True)  # the load board's file with it

    # ------------------------------------------------------------------ endpoints
    @routes.post(
        "/predict",
        summary="Classify one image",
        description="One image as a multipart file, a raw image/* body, or JSON base64.",
        response_model=PredictResponse,
        responses=ERRORS,
        openapi_extra=predict_openapi(batch=False),
        tags=["predict"],
    )
    async def predict(self, request: Request) -> Response:
        """One image -> the ``top_k`` best classes of the model, best first.

        Parameters (``service.schemas.Params``), as query parameters, form fields or JSON keys:
        ``model`` (default: the default model), ``version`` (default: the served one),
        ``top_k`` (default: ``top_k`` of the config). Body: a multipart file, a raw
        ``image/*`` body, or JSON ``{"image": base64}`` (``PredictForm``, ``PredictJSON``).
        Answer: ``PredictResponse``; refusals: ``ErrorResponse`` (docs/service.md).
        """
        chosen, scores, k = await self._classify(request, batch=False)
        return JSONResponse(
            {"model": chosen.name, "version": chosen.version, **_ranked(scores[0], chosen, k)}
        )

    @routes.post(
        "/predict_batch",
        summary="Classify several images; results in the same order",
        description='Multipart with one file field per image, or JSON `{"images": [base64, ...]}`.',
        response_model=PredictBatchResponse,
        responses=ERRORS,
        openapi_extra=predict_openapi(batch=True),
        tags=["predict"],
    )
    async def predict_batch(self, request: Request) -> Response:
        """Several images (at most ``max_batch_images``) -> one result per image, in order.

        Parameters as for ``predict``. Body: a multipart file field per image, or JSON
        ``{"images": [base64, ...]}`` (``PredictBatchForm``, ``PredictBatchJSON``).
        Answer: ``PredictBatchResponse``.
        """
        chosen, scores, k = await self._classify(request, batch=True)
        results = [_ranked(row, chosen, k) for row in scores]
        return JSONResponse({"model": chosen.name, "version": chosen.version, "results": results})

    @routes.get(
        "/models",
        summary="Models served: versions, labels, input contract, runtime, metrics",
        tags=["models"],
    )
    async def models(self) -> dict[str, Any]:
        """What is served (labels, input contract, runtime, file, sha256, export metrics) and
        what was refused with the reason."""
        return self.registry.describe()

    # ------------------------------------------------------------------ typed BentoML APIs
    # For BentoML's clients (bentoml.SyncHTTPClient / AsyncHTTPClient) and for composition
    # (bentoml.depends): the same registry, admission, engine and metrics as /predict, so the
    # answers are the same. /predict stays the hot path: a typed endpoint parses its multipart
    # body into a temporary file per image (docs/service.md, "Typed APIs").
    @bentoml.api(route="/classify")
    async def classify(
        self,
        image: Annotated[Path, ContentType("image/*")],
        model: ModelName | None = None,
        version: PositiveInt | None = None,
        top_k: PositiveInt | None = None,
    ) -> PredictResponse:
        """One image file -> the ``top_k`` best classes of the model, best first (as /predict).

        ``model`` (default: the default model), ``version`` (default: the served one),
        ``top_k`` (default: the config's). Refusals have /predict's status codes, with
        ``"code: message"`` as BentoML's error text.
        """
        chosen, scores, k = await self._typed([image], model, version, top_k)
        return PredictResponse.model_validate(
            {"model": chosen.name, "version": chosen.version, **_ranked(scores[0], chosen, k)}
        )

    @bentoml.api(route="/classify_batch")
    async def classify_batch(
        self,
        images: list[Annotated[Path, ContentType("image/*")]],
        model: ModelName | None = None,
        version: PositiveInt | None = None,
        top_k: PositiveInt | None = None,
    ) -> PredictBatchResponse:
        """Several image files (at most ``max_batch_images``) -> one result per image, in order
        (as /predict_batch)."""
        chosen, scores, k = await self._typed(images, model, version, top_k)
        return PredictBatchResponse.model_validate(
            {
                "model": chosen.name,
                "version": chosen.version,
                "results": [_ranked(row, chosen, k) for row in scores],
            }
        )

    async def _typed(
        self, files: list[Path], model: str | None, version: int | None, top_k: int | None
    ) -> tuple[LoadedModel, np.ndarray, int]:
        """The request path of the typed APIs; an ApiError becomes BentoML's error with the
        same status (BentoML answers an exception of its own with that status, anything else
        with 500)."""
        try:
            if not 0 < len(files) <= self.cfg.max_batch_images:
                raise ApiError(
                    "too_many_images" if files else "empty",
                    f"send 1 to {self.cfg.max_batch_images} images, not {len(files)}",
                )
            blobs = []
            for i, file in enumerate(files):
                size = file.stat().st_size
                if size > self.cfg.max_body_bytes:
                    raise ApiError(
                        "body_too_large",
                        f"image {i} is {size} bytes, over max_body_bytes "
                        f"({self.cfg.max_body_bytes})",
                    )
                blobs.append(file.read_bytes())
            chosen, scores = await self._run(model, version, blobs)
            return chosen, scores, top_k or self.cfg.top_k
        except ApiError as err:
            if is_input_error(err.code):
                self.metrics.rejected_inputs.labels(reason=err.code).inc()
            raise BentoMLException(
                f"{err.code}: {err.message}", error_code=HTTPStatus(err.status)
            ) from None

    # ------------------------------------------------------------------ Open Inference Protocol
    @routes.get("/v2", summary="v2 protocol: server metadata and extensions", tags=["v2"])
    async def v2_server(self) -> dict[str, Any]:
        """Open Inference Protocol server metadata: name, version and extensions (service.v2)."""
        return v2.server_metadata(handserve.__version__)

    @routes.get("/v2/health/live", summary="v2 protocol: server liveness", tags=["v2"])
    async def v2_live(self) -> dict[str, Any]:
        return {"live": True}

    @routes.get("/v2/health/ready", summary="v2 protocol: server readiness", tags=["v2"])
    async def v2_ready(self) -> Response:
        """200 once every model of every worker is warm, as ``/readyz``; 503 before."""
        ready = self.__is_ready__()
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @routes.get("/v2/models/{name}", summary="v2 protocol: model metadata", tags=["v2"])
    async def v2_model(self, name: str) -> Response:
        """Inputs and outputs with names, datatypes and shapes (``service.v2``)."""
        return self._v2(self._v2_metadata, name, None)

    @routes.get(
        "/v2/models/{name}/versions/{version}",
        summary="v2 protocol: model version metadata",
        tags=["v2"],
    )
    async def v2_model_version(self, name: str, version: str) -> Response:
        return self._v2(self._v2_metadata, name, version)

    @routes.get("/v2/models/{name}/ready", summary="v2 protocol: model readiness", tags=["v2"])
    async def v2_model_ready(self, name: str) -> Response:
        """200 when the model is served and warm; 404 for a model not served."""
        return self._v2(self._v2_model_ready, name, None)

    @routes.get(
        "/v2/models/{name}/versions/{version}/ready",
        summary="v2 protocol: model version readiness",
        tags=["v2"],
    )
    async def v2_model_version_ready(self, name: str, version: str) -> Response:
        return self._v2(self._v2_model_ready, name, version)

    @routes.post(
        "/v2/models/{name}/infer",
        summary="v2 protocol: inference (tensors or encoded images)",
        description="Open Inference Protocol request; binary tensor data and classification "
        "extensions (docs/service.md).",
        responses=ERRORS,
        openapi_extra=v2.openapi(),
        tags=["v2"],
    )
    async def v2_infer(self, request: Request, name: str) -> Response:
        """The v2 protocol's infer: parsed by ``service.v2``, then the request path of
        ``/predict`` (admission, engine, metrics)."""
        return await self._v2_infer(request, name, None)

    @routes.post(
        "/v2/models/{name}/versions/{version}/infer",
        summary="v2 protocol: inference on a version",
        responses=ERRORS,
        openapi_extra=v2.openapi(),
        tags=["v2"],
    )
    async def v2_infer_version(self, request: Request, name: str, version: str) -> Response:
        return await self._v2_infer(request, name, version)

    def _v2(self, fn: Any, name: str, version: str | None) -> Response:
        try:
            return JSONResponse(fn(self._v2_resolve(name, version)))
        except ApiError as err:
            return v2_error(err)

    def _v2_resolve(self, name: str, version: str | None) -> LoadedModel:
        self._ready_engine()
        return self.registry.resolve(name, v2.parse_version(version))

    @staticmethod
    def _v2_metadata(model: LoadedModel) -> dict[str, Any]:
        return v2.model_metadata(model.name, model.version, model.runtime.name, model.manifest)

    @staticmethod
    def _v2_model_ready(model: LoadedModel) -> dict[str, Any]:
        return {"name": model.name, "ready": True}

    async def _v2_infer(self, request: Request, name: str, version: str | None) -> Response:
        try:
            model = self._v2_resolve(name, version)
            body = await read_body(request, self.cfg.max_body_bytes, self.cfg.body_timeout_s)
            body = v2_wire.decompress(
                body, request.headers.get("content-encoding"), self.cfg.max_body_bytes
            )
            call = v2.parse_infer(
                body,
                request.headers.get(v2_wire.HEADER_LENGTH),
                model.manifest,
                self.cfg.max_batch_images,
            )
            scores = await self._v2_scores(model, call)
            content, headers, media = v2_wire.render(
                call.outputs, call.id, model.name, model.version, model.manifest.labels, scores
            )
            return Response(content, headers=headers, media_type=media)
        except ApiError as err:
            count_rejected(self.metrics, err)
            return v2_error(err)

    async def _v2_scores(self, model: LoadedModel, call: v2.InferCall) -> np.ndarray:
        """Scores of a checked infer call (REST or gRPC), admitted and run by the engine."""
        engine = self._ready_engine()
        pixels = call.pixels
        if pixels is not None:
            return await self._admitted(call.count, lambda: engine.classify_pixels(model, pixels))
        files = call.files or []
        return await self._admitted(call.count, lambda: engine.classify(model, files))

    # ------------------------------------------------------------------ the request path
    async def _classify(
        self, request: Request, *, batch: bool
    ) -> tuple[LoadedModel, np.ndarray, int]:
        """Parse, resolve, admit, decode and run: the scores of every image of the request."""
        self._ready_engine()  # before reading the body: a loading server refuses at once
        query = parse_params(request.query_params, "query")
        parsed = await parse_request(
            request,
            batch=batch,
            max_body_bytes=self.cfg.max_body_bytes,
            max_images=self.cfg.max_batch_images if batch else 1,
            body_timeout_s=self.cfg.body_timeout_s,
            query=query,
        )
        params = parsed.params
        model, scores = await self._run(params.model, params.version, parsed.images)
        return model, scores, params.top_k or self.cfg.top_k

    async def _run(
        self, name: str | None, version: int | None, images: list[bytes]
    ) -> tuple[LoadedModel, np.ndarray]:
        """Resolve the model, admit the images, decode and run them: their scores, in order."""
        engine = self._ready_engine()
        model = self.registry.resolve(name, version)
        return model, await self._admitted(len(images), lambda: engine.classify(model, images))

    def _ready_engine(self) -> Engine:
        """The engine, once every model is loaded and warm; before that, 503 ``not_ready``."""
        if not self.registry.ready or self.engine is None:
            why = self.registry.load_error or "models are still loading"
            raise ApiError("not_ready", why, headers={"Retry-After": "1"})
        return self.engine

    async def _admitted(self, n: int, run: Callable[[], Awaitable[np.ndarray]]) -> np.ndarray:
        """``run()`` for ``n`` images within the admission cap (503 ``overloaded`` beyond it)."""
        self.admission.acquire(n)
        try:
            return await run()
        finally:
            self.admission.release(n)


def _server_dir() -> Path:
    """The folder the worker processes of one server share: readiness marks, the load board.

    BentoML answers ``/readyz`` from whichever worker gets the request, and each worker loads
    its models itself; the server is ready only when all are, so each marks itself ready here.
    The connection balancing's load board (service.balance) is a file here too. The workers
    share a parent (the ``bentoml serve`` process), so its PID names the folder.
    """
    return Path(tempfile.gettempdir()) / f"handserve-ready-{os.getppid()}"


def _ranked(scores: np.ndarray, model: LoadedModel, k: int) -> dict[str, Any]:
    return {"predictions": top_k(scores, model.manifest.labels, k)}


# ---------------------------------------------------------------------- errors, demo page
def _current(attribute: str) -> Callable[[], Any]:
    """A getter of one attribute of the service instance BentoML made (in-process tests make
    their own), or None before there is an instance."""

    def get() -> Any:
        try:
            return getattr(bentoml.get_current_service(), attribute)
        except BentoMLException:  # no instance yet: nothing to count into or balance
            return None

    return get


install_error_handlers(app, _current("metrics"))
routes.bind(app, bentoml.get_current_service)
# The decorator made HandServe a bentoml Service (typed as the class it wraps).
_bentoml_service: Any = HandServe
_bentoml_service.add_asgi_middleware(JSONErrors)
if BALANCING:
    _bentoml_service.add_asgi_middleware(balance.CloseToRebalance, balancer=_current("balancer"))


@app.get("/demo", include_in_schema=False)
async def _demo_redirect() -> Response:
    return RedirectResponse("/demo/")


app.mount("/demo", StaticFiles(directory=STATIC_DIR, html=True, check_dir=False), name="demo")

__all__ = ["HandServe", "app"]
