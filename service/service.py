"""The BentoML service: ``bentoml serve service.service:HandServe``.

This module holds the server's lifecycle and the declaration of every public endpoint, so one
file answers "what does this server answer". Each endpoint is a route declared on the
:class:`HandServe` class below (FastAPI, mounted with ``@bentoml.asgi_app``; :mod:`service.routes`
binds them to the running instance), and the OpenAPI document comes from the types in
:mod:`service.schemas`. In a server, ``POST /predict`` and ``/predict_batch`` are answered one
layer earlier, with the same code, by :mod:`service.front` (a shorter path for the requests that
matter most). The work is elsewhere: every protocol parses its own wire format and
calls the same :class:`~service.dataplane.DataPlane` (registry, admission, engine):

    parse (service.parsing | service.v2_http | service.v2_grpc)
        -> DataPlane: resolve the model -> admit -> decode and run (service.inference: LiteRT
           side by side, one worker process per core; or adaptive batches for SavedModel)
        -> answer

Models load in a background task so ``/livez`` answers at once; ``__is_ready__`` makes
``/readyz`` 503 until every model is verified and warm in every worker. Configuration comes from
``$HANDSERVE_CONFIG`` and ``HANDSERVE_*`` variables (read at import, because BentoML's
decorator needs the worker numbers); docs/service.md has the why of each choice.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path
from typing import Annotated, Any

import bentoml
from bentoml.validators import ContentType
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles

import handserve
from handserve.runtimes import SavedModelRuntime, available_cpus, choose_runtime_name
from service import (
    balance,
    bento_guard,
    connections,
    deadline,
    image_api,
    model_files,
    v2,
    v2_http,
    workers,
)
from service import metrics as metrics_mod
from service.config import ServiceConfig, load_service_config
from service.dataplane import DataPlane
from service.errors import STATUS, install_error_handlers
from service.front import Front
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
    # service.deadline answers at timeout_s in the API's error shape; BentoML's is a backstop.
    traffic={"timeout": CONFIG.timeout_s + deadline.BACKSTOP_S},
    tracing={"excluded_urls": "predict,predict_batch,infer"},
    logging={"access": {"enabled": CONFIG.access_log}},
)
@bentoml.asgi_app(app, path="/")
class HandServe:
    """Image classification over REST and gRPC: every model of the models folder, verified and
    warm, behind one :class:`~service.dataplane.DataPlane`."""

    def __init__(self, cfg: ServiceConfig | None = None, metrics_registry: Any = None) -> None:
        """BentoML calls this with no arguments; in-process tests pass their own config and
        Prometheus registry (metrics may be registered once per registry)."""
        self.cfg = cfg or CONFIG
        self.metrics = metrics_mod.create(self.cfg.max_batch_size, metrics_registry)
        self.plane = DataPlane(self.cfg, self.metrics)
        self._loader: asyncio.Task[None] | None = None
        self._all_ready = False
        self._grpc: Any = None  # the Open Inference Protocol's gRPC server, when grpc_port is set
        #: This worker's side of the connection balancing (service.balance); None with one
        #: worker, with `rebalance` off, or outside `bentoml serve` (in-process tests).
        self.balancer: balance.ConnectionBalancer | None = None
        self._balancing: asyncio.Task[None] | None = None
        # What the routes, the error handlers and the balancing middleware of the app use: the
        # one instance of this worker process (BentoML makes one; a test makes its own).
        app.state.service = self
        app.state.metrics = self.metrics
        app.state.balancer = None

    # ------------------------------------------------------------------ lifecycle
    @bentoml.on_startup
    async def start(self) -> None:
        """Load in the background: the server must accept /livez (and gRPC's ServerLive)
        while models load."""
        if bentoml.server_context.worker_index is not None and workers.ready_count():
            # Its peers serve, so this worker was restarted (a crash, a kill): connections it
            # accepts before its models are loaded wait for them rather than get 503s.
            self.plane.hold_while_loading_s = self.cfg.timeout_s
        if self.cfg.grpc_port:
            await self._start_grpc()
        self._start_balancing()
        self._loader = asyncio.get_running_loop().create_task(self.load())

    def _start_balancing(self) -> None:
        """Publish this worker's load and shed connections while a peer idles (service.balance)."""
        index = bentoml.server_context.worker_index  # 1-based; None outside `bentoml serve`
        if not BALANCING or index is None:
            return
        self.balancer = balance.start(workers.server_dir(), WORKERS, index - 1, self.metrics)
        if self.balancer is not None:
            app.state.balancer = self.balancer
            if self.cfg.spare_cores:  # the peers' published load says when their cores idle
                self.plane.spare_cores = self.balancer.peers_idle
            self._balancing = asyncio.get_running_loop().create_task(self.balancer.run())

    async def _start_grpc(self) -> None:
        """The gRPC port of this worker; one that cannot listen keeps the server unready."""
        from service import v2_grpc  # grpc is imported only by servers that use it

        backend = v2_grpc.Backend(self.plane, self.__is_ready__, handserve.__version__)
        try:
            self._grpc = await v2_grpc.start(backend, self.cfg.grpc_host, self.cfg.grpc_port)
        except (OSError, RuntimeError) as exc:
            self.plane.refuse_all(f"gRPC port {self.cfg.grpc_port}: {exc}")
            log.error("gRPC port %s: %s; /readyz stays 503", self.cfg.grpc_port, exc)

    async def load(self) -> None:
        """The data plane's load, then ready: in this worker, and marked for its peers."""
        try:
            await self.plane.load()
            if self.cfg.grpc_port and self._grpc is None:
                return  # the gRPC port was asked for and could not listen (logged)
            if not self.plane.models:
                # Ready with nothing to serve would send traffic to a useless replica.
                self.plane.refuse_all("no model could be served")
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
            self.plane.mark_ready()
            if bentoml.server_context.worker_index is not None:
                workers.mark_ready()
            log.info("ready (%s engine)", self.plane.engine.kind if self.plane.engine else "no")
        except Exception as exc:
            self.plane.refuse_all(f"loading models failed: {type(exc).__name__}")
            log.exception("loading models failed; /readyz stays 503")

    async def loaded(self) -> None:
        """Wait until :meth:`load` has finished (ready or not): for tests and tools."""
        if self._loader is not None:
            await asyncio.shield(self._loader)

    def __is_ready__(self) -> bool:
        """Ready when every worker process of this server is: any of them may get a request.
        A worker that lost every model (its versions removed from disk) is not."""
        if not self.plane.ready:
            return False
        if self._all_ready or bentoml.server_context.worker_index is None:
            return True  # (in a test: one instance, no peers)
        self._all_ready = workers.ready_count() >= WORKERS
        return self._all_ready

    @bentoml.on_shutdown
    async def stop(self) -> None:
        """Stop watching, close the gRPC port (in-flight calls get 5 s), stop balancing."""
        await self.plane.stop()
        if self._grpc is not None:
            await self._grpc.stop(grace=5)
        if self._balancing is not None:
            self._balancing.cancel()
        if bentoml.server_context.worker_index is not None:
            workers.remove()

    # ------------------------------------------------------------------ image API
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
        return JSONResponse(await image_api.classify_request(self.plane, request, batch=False))

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
        return JSONResponse(await image_api.classify_request(self.plane, request, batch=True))

    @routes.get(
        "/models",
        summary="Models served: versions, labels, input contract, runtime, metrics",
        tags=["models"],
    )
    async def models(self) -> dict[str, Any]:
        """What is served (labels, input contract, runtime, file, sha256, export metrics) and
        what was refused with the reason."""
        return self.plane.describe()

    # The demo page's device mode runs the server's own files in the browser (service.model_files).
    @routes.get(
        "/models/{name}/{version}/files/{path:path}",
        summary="A file of a served version (only those its manifest lists), checksummed",
        responses=ERRORS,
        tags=["models"],
    )
    async def model_file(self, name: str, version: str, path: str) -> Response:
        return model_files.version_file(self.plane, name, version, path)

    @routes.get("/hand_models", summary="The hand models this server runs", tags=["models"])
    async def hand_models(self) -> dict[str, Any]:
        return model_files.hand_models_index()

    @routes.get(
        "/hand_models/{file}", summary="One of the hand models, checksummed", tags=["models"]
    )
    async def hand_model(self, file: str) -> Response:
        return model_files.hand_model_file(file)

    # ------------------------------------------------------------------ typed BentoML APIs
    # For BentoML's clients (bentoml.SyncHTTPClient / AsyncHTTPClient) and for composition
    # (bentoml.depends): the same data plane as /predict, so the answers are the same.
    # /predict stays the hot path: a typed endpoint parses its multipart body into a temporary
    # file per image (docs/service.md, "Typed APIs").
    @bentoml.api(route="/classify")
    async def classify(
        self,
        image: Annotated[Path, ContentType("image/*")],
        ctx: bentoml.Context,
        model: ModelName | None = None,
        version: PositiveInt | None = None,
        top_k: PositiveInt | None = None,
    ) -> PredictResponse:
        """One image file -> the ``top_k`` best classes of the model, best first (as /predict).

        ``model`` (default: the default model), ``version`` (default: the served one),
        ``top_k`` (default: the config's). Refusals have /predict's status codes and body.
        """
        work = image_api.classify_files(self.plane, [image], model, version)
        chosen, scores = await image_api.refusals_as_bentoml(ctx.request, self.metrics, work)
        return PredictResponse.model_validate(
            image_api.answer(chosen, scores, top_k or self.cfg.top_k)
        )

    @bentoml.api(route="/classify_batch")
    async def classify_batch(
        self,
        images: list[Annotated[Path, ContentType("image/*")]],
        ctx: bentoml.Context,
        model: ModelName | None = None,
        version: PositiveInt | None = None,
        top_k: PositiveInt | None = None,
    ) -> PredictBatchResponse:
        """Several image files (at most ``max_batch_images``) -> one result per image, in order
        (as /predict_batch)."""
        work = image_api.classify_files(self.plane, images, model, version)
        chosen, scores = await image_api.refusals_as_bentoml(ctx.request, self.metrics, work)
        return PredictBatchResponse.model_validate(
            image_api.answer_batch(chosen, scores, top_k or self.cfg.top_k)
        )

    @bentoml.api(route="/classify_landmarks")
    async def classify_landmarks(
        self,
        image_landmarks: list[list[float]],
        world_landmarks: list[list[float]],
        handedness: float,
        image_size: list[float],
        ctx: bentoml.Context,
        model: ModelName | None = None,
        version: PositiveInt | None = None,
        top_k: PositiveInt | None = None,
    ) -> PredictResponse:
        """One hand as MediaPipe's HandLandmarker reports it, for a hand-feature model: 21
        ``image_landmarks`` [x, y, z] (x, y as fractions of the image), 21 ``world_landmarks``
        [x, y, z] in metres, ``handedness`` (the score of "Right"), ``image_size`` [width,
        height] in pixels -> the ``top_k`` best classes, as /predict answers a photo of it."""
        hand = {
            "image_landmarks": image_landmarks,
            "world_landmarks": world_landmarks,
            "handedness": handedness,
            "image_size": image_size,
        }
        work = image_api.classify_landmarks(self.plane, model, version, hand)
        chosen, scores = await image_api.refusals_as_bentoml(ctx.request, self.metrics, work)
        return PredictResponse.model_validate(
            image_api.answer(chosen, scores, top_k or self.cfg.top_k)
        )

    # ------------------------------------------------------------------ Open Inference Protocol
    # Translated by service.v2_http (REST) and service.v2_grpc (gRPC) into data plane calls.
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
        return v2_http.model_answer(self.plane, v2_http.metadata, name, None)

    @routes.get(
        "/v2/models/{name}/versions/{version}",
        summary="v2 protocol: model version metadata",
        tags=["v2"],
    )
    async def v2_model_version(self, name: str, version: str) -> Response:
        return v2_http.model_answer(self.plane, v2_http.metadata, name, version)

    @routes.get("/v2/models/{name}/ready", summary="v2 protocol: model readiness", tags=["v2"])
    async def v2_model_ready(self, name: str) -> Response:
        """200 when the model is served and warm; 404 for a model not served."""
        return v2_http.model_answer(self.plane, v2_http.model_ready, name, None)

    @routes.get(
        "/v2/models/{name}/versions/{version}/ready",
        summary="v2 protocol: model version readiness",
        tags=["v2"],
    )
    async def v2_model_version_ready(self, name: str, version: str) -> Response:
        return v2_http.model_answer(self.plane, v2_http.model_ready, name, version)

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
        """The v2 protocol's infer: tensors or encoded images, then the data plane."""
        return await v2_http.infer(self.plane, request, name, None)

    @routes.post(
        "/v2/models/{name}/versions/{version}/infer",
        summary="v2 protocol: inference on a version",
        responses=ERRORS,
        openapi_extra=v2.openapi(),
        tags=["v2"],
    )
    async def v2_infer_version(self, request: Request, name: str, version: str) -> Response:
        return await v2_http.infer(self.plane, request, name, version)


# ---------------------------------------------------------------------- wiring, demo page
install_error_handlers(app)
routes.bind(app, lambda: app.state.service)
# The decorator made HandServe a bentoml Service (typed as the class it wraps).
_bentoml_service: Any = HandServe
# One layer of handserve's inside BentoML's stack: the image API's short path, and the error
# shape, deadline and balancing of every other request (service.front).
_bentoml_service.add_asgi_middleware(
    Front,
    service=lambda: getattr(app.state, "service", None),
    timeout_s=CONFIG.timeout_s,
    balancer=(lambda: getattr(app.state, "balancer", None)) if BALANCING else None,
)


@app.get("/demo", include_in_schema=False)
async def _demo_redirect() -> Response:
    return RedirectResponse("/demo/")


app.mount("/demo", StaticFiles(directory=STATIC_DIR, html=True, check_dir=False), name="demo")

__all__ = ["HandServe", "app"]
