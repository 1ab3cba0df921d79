"""The Open Inference Protocol over REST: the handlers behind ``/v2/models/...`` routes.

The routes are declared on the service class (:mod:`service.service`), where a reader finds
every endpoint; their work is here, beside the gRPC front end (:mod:`service.v2_grpc`): both
translate with :mod:`service.v2` and :mod:`service.v2_wire` and call the same
:class:`~service.dataplane.DataPlane`. Errors keep the protocol's own ``{"error": "..."}``
shape (:func:`service.errors.v2_error`), which its clients parse.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service import v2, v2_wire
from service.dataplane import DataPlane
from service.errors import ApiError, count_rejected, v2_error
from service.parsing import read_body
from service.registry import LoadedModel


def model_answer(
    plane: DataPlane,
    describe: Callable[[LoadedModel], dict[str, Any]],
    name: str,
    version: str | None,
) -> Response:
    """``describe(model)`` of the model a metadata or readiness route names, or its v2 error."""
    try:
        return JSONResponse(describe(v2.resolve(plane, name, version)))
    except ApiError as err:
        return v2_error(err)


def metadata(model: LoadedModel) -> dict[str, Any]:
    """``GET /v2/models/NAME``: inputs and outputs with names, datatypes and shapes."""
    return v2.metadata_of(model)


def model_ready(model: LoadedModel) -> dict[str, Any]:
    """``GET /v2/models/NAME/ready`` of a served (so warm) model."""
    return {"name": model.name, "ready": True}


async def infer(plane: DataPlane, request: Request, name: str, version: str | None) -> Response:
    """``POST /v2/models/NAME[/versions/V]/infer``: parsed, run by the data plane, rendered as
    JSON or with the binary tensor data extension, as the request asked."""
    cfg = plane.cfg
    try:
        await plane.wait_ready()  # before reading the body: a loading server refuses now
        model = v2.resolve(plane, name, version)
        body = await read_body(request, cfg.max_body_bytes, cfg.body_timeout_s)
        body = v2_wire.decompress(body, request.headers.get("content-encoding"), cfg.max_body_bytes)
        call = v2.parse_infer(
            body, request.headers.get(v2_wire.HEADER_LENGTH), model.manifest, cfg.max_batch_images
        )
        scores = await v2.scores(plane, model, call)
        content, headers, media = v2_wire.render(
            call.outputs, call.id, model.name, model.version, model.manifest.labels, scores
        )
        return Response(content, headers=headers, media_type=media)
    except ApiError as err:
        count_rejected(plane.metrics, err)
        return v2_error(err)
