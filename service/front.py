"""handserve's one ASGI layer inside BentoML's stack, and the image API's short path through it.

Every request crosses BentoML's own middlewares (its request metrics, tracing, access log and
timeout) and then this layer. Most requests then go on, through the error-shape, deadline and
connection-balancing middlewares (:class:`~service.errors.JSONErrors`,
:class:`~service.deadline.Deadline`, :class:`~service.balance.CloseToRebalance`), BentoML's
context middleware and router, FastAPI's middlewares, router and dependency solving, to the
route. For ``POST /predict`` and ``POST /predict_batch``, the requests a production client
sends by the thousand, that walk cost as much CPU as the model call of a small model
(docs/benchmarks/peers.md: about 0.15 ms of a digits request's 1 ms, above BentoML's floor and
the model). So this layer answers them itself, with the same front end
(:func:`service.image_api.classify_request`), the same data plane, the same error shape and
counting, the same deadline (504 ``timeout`` in the API's shape, the work stopped at its next
image) and the same ``Connection: close`` of the balancing: what the three middlewares and the
route do, folded into one call and one ``send``. The routes stay declared on the service class
(they document the API in OpenAPI and answer when this layer is not in front, as in-process).

BentoML's CORS middleware, when a user turns it on, sits inside this layer: then every request
takes the long way, so cross-origin answers keep their headers.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request

from service import balance, deadline, image_api
from service.errors import INTERNAL_MESSAGE, ApiError, JSONErrors, count_rejected

log = logging.getLogger("handserve.service")

#: The routes answered here: path -> whether it is the batch form.
SHORT_PATHS = {"/predict": False, "/predict_batch": True}


def json_bytes(data: Any) -> bytes:
    """JSON as Starlette's ``JSONResponse`` renders it (compact, UTF-8, no NaN)."""
    return json.dumps(
        data, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")


class Front:
    """ASGI middleware: the image API's requests answered here, everything else passed on
    through the error-shape, deadline and balancing middlewares.

    ``service`` returns the worker's service instance (``app.state.service``), or None before
    BentoML has made it; ``timeout_s`` and ``balancer`` (None without balancing: the
    connection balancer) are for the long way's middlewares. The short path reads the
    instance's own: its ``cfg.timeout_s`` and ``balancer`` (the same, in a server).
    """

    def __init__(
        self,
        app: Any,
        service: Callable[[], Any],
        timeout_s: float,
        balancer: Callable[[], balance.ConnectionBalancer | None] | None = None,
    ) -> None:
        self.app = app
        self.service = service
        self.timeout_s = timeout_s
        inner = app if balancer is None else balance.CloseToRebalance(app, balancer)
        self.long_way = JSONErrors(deadline.Deadline(inner, timeout_s))
        #: False where BentoML's CORS middleware is inside: its headers must be added.
        self.short = not isinstance(app, CORSMiddleware)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.short and scope["type"] == "http" and scope["method"] == "POST":
            batch = SHORT_PATHS.get(scope["path"])
            service = self.service() if batch is not None else None
            if service is not None:
                await self._image_api(service, scope, receive, send, batch=bool(batch))
                return
        await self.long_way(scope, receive, send)

    async def _image_api(
        self, service: Any, scope: Any, receive: Any, send: Any, *, batch: bool
    ) -> None:
        """``/predict`` or ``/predict_batch``: what the route and the three middlewares do."""
        balancer: balance.ConnectionBalancer | None = service.balancer
        client = scope.get("client")
        if balancer is not None:
            balancer.seen(client)
        watch = deadline.Watch(service.cfg.timeout_s)
        try:
            status, body, extra = await self._answer(service, scope, receive, batch)
        except asyncio.CancelledError:
            if not watch.expired.is_set():
                raise  # not the deadline's: the client left, or the server stops
        finally:
            watch.close()
        if not watch.answering():  # past the deadline: 504, whatever the work came to
            await watch.answer_timeout(send, str(scope["path"]))
            return
        headers = [
            (b"content-length", b"%d" % len(body)),
            (b"content-type", b"application/json"),
            *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()),
        ]
        if balancer is not None and balancer.should_close(client):
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    async def _answer(
        service: Any, scope: Any, receive: Any, batch: bool
    ) -> tuple[int, bytes, dict[str, str]]:
        """Status, JSON body and extra headers, as the route and the app's error handlers
        answer them (service.errors.install_error_handlers)."""
        try:
            answer = await image_api.classify_request(
                service.plane, Request(scope, receive), batch=batch
            )
        except ApiError as err:
            count_rejected(service.metrics, err)
            return err.status, json_bytes(err.body()), err.headers
        except Exception as exc:
            log.error("unexpected error in %s", scope["path"], exc_info=exc)
            internal = ApiError("internal", INTERNAL_MESSAGE)
            return internal.status, json_bytes(internal.body()), internal.headers
        return 200, json_bytes(answer), {}
