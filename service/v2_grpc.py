"""The Open Inference Protocol over gRPC, beside the REST routes, for callers that speak only gRPC.

``tritonclient.grpc``, ``perf_analyzer -i grpc``, the kserve SDK's ``InferenceGRPCClient`` and
services generated from the protocol's ``.proto`` connect to ``handserve serve --grpc-port N``.
BentoML 1.4 serves no gRPC for a service like this one (bentoml/BentoML#4634), so each worker
process runs a ``grpc.aio`` server on its own event loop, on the same port (``SO_REUSEPORT``:
the kernel spreads connections over the workers, as it does for HTTP).

The messages are the generated ones tritonclient ships (``tritonclient.grpc.service_pb2``,
package ``inference``: the KServe v2 messages plus Triton's extensions, which answer
``UNIMPLEMENTED``). Nothing is translated twice: a ``ModelInferRequest`` becomes the same
mapping a REST request's JSON is and goes through :func:`service.v2.build_call`, the same
admission, engine and metrics as ``/v2/models/NAME/infer``; errors carry the same messages
with the gRPC status of their HTTP status (:data:`GRPC_STATUS`).

Bytes that are not a protobuf message are answered ``INVALID_ARGUMENT`` (grpc's own handler
would say ``INTERNAL``); a message over the size limit is refused by grpc itself with
``RESOURCE_EXHAUSTED`` before it is read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2 as pb

from handserve.artifacts import Manifest
from service import v2, v2_wire
from service.errors import INTERNAL_MESSAGE, ApiError, count_rejected

if TYPE_CHECKING:
    from service.dataplane import DataPlane
    from service.registry import LoadedModel

log = logging.getLogger("handserve.service")

SERVICE_NAME = "inference.GRPCInferenceService"

#: HTTP status of an ApiError -> the gRPC status it is answered with.
GRPC_STATUS: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

#: Room for the protobuf framing around the largest body a REST request may send.
MESSAGE_OVERHEAD = 64 * 1024


class _Undecodable:
    """What the deserializer hands on for bytes that are not the method's message."""

    def __init__(self, error: str) -> None:
        self.error = error


def _deserializer(message: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message.FromString(data)
        except (DecodeError, RuntimeWarning, ValueError) as exc:
            return _Undecodable(str(exc)[:200] or type(exc).__name__)

    return parse


# ---------------------------------------------------------------------- message <-> mapping
def parameters(params: Any) -> dict[str, Any]:
    """A protobuf ``map<string, InferParameter>`` as plain values (what JSON would give)."""
    out = {}
    for key, value in params.items():
        choice = value.WhichOneof("parameter_choice")
        if choice is not None:
            out[key] = getattr(value, choice)
    return out


#: The typed ``contents`` field of each datatype the model's inputs take.
_CONTENTS = {"UINT8": "uint_contents", "FP32": "fp32_contents", "BYTES": "bytes_contents"}
_ALL_CONTENTS = (
    "bool_contents",
    "int_contents",
    "int64_contents",
    "uint_contents",
    "uint64_contents",
    "fp32_contents",
    "fp64_contents",
    "bytes_contents",
)


def _contents(tensor: Any) -> Any:
    """The typed values of an input (None when it has none): a NumPy array for numbers,
    a list of ``bytes`` (image files as they are) for ``BYTES``."""
    if not tensor.HasField("contents"):
        return None
    fields = [_CONTENTS[tensor.datatype]] if tensor.datatype in _CONTENTS else _ALL_CONTENTS
    for name in fields:
        values = getattr(tensor.contents, name)
        if len(values):
            return list(values) if name == "bytes_contents" else np.asarray(values)
    return []


def request_mapping(request: Any) -> dict[str, Any]:
    """A ``ModelInferRequest`` as the ``$inference_request`` mapping of the REST protocol."""
    return {
        "id": request.id or None,
        "parameters": parameters(request.parameters) or None,
        "inputs": [
            {
                "name": t.name,
                "datatype": t.datatype,
                "shape": list(t.shape),
                "parameters": parameters(t.parameters) or None,
                "data": _contents(t),
            }
            for t in request.inputs
        ],
        "outputs": [
            {"name": o.name, "parameters": parameters(o.parameters) or None}
            for o in request.outputs
        ]
        or None,
    }


def parse_request(request: Any, manifest: Manifest, max_images: int) -> v2.InferCall:
    """Validate a ``ModelInferRequest`` against the model's contract (as REST requests are)."""
    raws = request.raw_input_contents

    def raw_of(index: int, tensor: v2.InferInputTensor, count: int) -> bytes | None:
        if raws:
            if len(raws) != len(request.inputs):
                raise ApiError(
                    "bad_request",
                    f"{len(raws)} raw_input_contents for {len(request.inputs)} inputs",
                )
            if tensor.data is not None:
                raise ApiError(
                    "bad_request", "an input has either contents or raw_input_contents, not both"
                )
            return bytes(raws[index])
        if tensor.data is None:
            raise ApiError("bad_request", f"input {tensor.name[:40]!r} has no contents")
        return None

    return v2.build_call(request_mapping(request), manifest, max_images, raw_of)


def infer_response(
    call: v2.InferCall, name: str, version: int, labels: list[str], scores: np.ndarray
) -> Any:
    """``ModelInferResponse`` with ``raw_output_contents``, as Triton answers over gRPC."""
    response = pb.ModelInferResponse(model_name=name, model_version=str(version), id=call.id or "")
    n = len(scores)
    for want in call.outputs:
        tensor = response.outputs.add(name=v2_wire.OUTPUT)
        if want.classification:
            rows = v2_wire.classification(scores, labels, want.classification)
            tensor.datatype = "BYTES"
            tensor.shape.extend([n, want.classification])
            response.raw_output_contents.append(
                v2_wire.serialize_bytes([s for row in rows for s in row])
            )
        else:
            tensor.datatype = "FP32"
            tensor.shape.extend([n, scores.shape[1]])
            response.raw_output_contents.append(np.ascontiguousarray(scores, "<f4").tobytes())
    return response


def model_metadata(meta: dict[str, Any]) -> Any:
    """:func:`service.v2.model_metadata`'s mapping as a ``ModelMetadataResponse``."""

    def tensors(items: list[dict[str, Any]]) -> list[Any]:
        return [pb.ModelMetadataResponse.TensorMetadata(**t) for t in items]

    return pb.ModelMetadataResponse(
        name=meta["name"],
        versions=meta["versions"],
        platform=meta["platform"],
        inputs=tensors(meta["inputs"]),
        outputs=tensors(meta["outputs"]),
    )


# ---------------------------------------------------------------------- the server
@dataclass(frozen=True)
class Backend:
    """What the gRPC methods need of the running service: its data plane (models, admission,
    engine, metrics and limits, as the REST routes use them) and the server's readiness."""

    plane: DataPlane
    #: the server's readiness (every worker warm), as ``/readyz`` and ``/v2/health/ready`` say
    is_ready: Callable[[], bool]
    version: str


class InferenceServicer:
    """The protocol's six methods over the running service's :class:`Backend`."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.backend.is_ready())

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(**v2.server_metadata(self.backend.version))

    def _resolve(self, name: str, version: str) -> LoadedModel:
        """The served model a message names. Over REST the name is part of the path; here an
        empty one is a request that names no model, not a request for the default model."""
        if not name:
            raise ApiError("unknown_model", "the request names no model")
        return v2.resolve(self.backend.plane, name, version)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        """Ready when the model is served and warm; a model refused at load, unknown, or on a
        server still loading is not ready (``false``, as Triton answers), not an error."""
        try:
            self._resolve(request.name, request.version)
        except ApiError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        model = self._resolve(request.name, request.version)
        return model_metadata(v2.metadata_of(model))

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        await self.backend.plane.wait_ready()
        model = self._resolve(request.model_name, request.model_version)
        plane = self.backend.plane
        call = parse_request(request, model.manifest, plane.cfg.max_batch_images)
        scores = await v2.scores(plane, model, call)
        return infer_response(call, model.name, model.version, model.manifest.labels, scores)


def _handler(
    metrics: Any, method: str, fn: Callable[[Any, Any], Awaitable[Any]], message: Any
) -> grpc.RpcMethodHandler:
    """A unary method: undecodable bytes and ApiErrors answered with their status, counted."""

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            if isinstance(request, _Undecodable):
                raise ApiError(
                    "bad_request", f"the message is not a {method}Request: {request.error}"
                )
            return await fn(request, context)
        except grpc.aio.AbortError:
            raise
        except ApiError as err:
            count_rejected(metrics, err)
            code = GRPC_STATUS.get(err.status, grpc.StatusCode.INVALID_ARGUMENT)
            if "Retry-After" in err.headers:
                context.set_trailing_metadata((("retry-after", err.headers["Retry-After"]),))
            await context.abort(code, err.message)
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("unexpected error in gRPC %s", method)
            await context.abort(code, INTERNAL_MESSAGE)
        finally:
            metrics.grpc_requests.labels(method=method, code=code.name).inc()
            metrics.grpc_seconds.labels(method=method).observe(time.perf_counter() - started)

    return grpc.unary_unary_rpc_method_handler(
        handle,
        request_deserializer=_deserializer(message),
        response_serializer=lambda m: m.SerializeToString(),
    )


#: The protocol's methods and their request messages.
METHODS = {
    "ServerLive": pb.ServerLiveRequest,
    "ServerReady": pb.ServerReadyRequest,
    "ServerMetadata": pb.ServerMetadataRequest,
    "ModelReady": pb.ModelReadyRequest,
    "ModelMetadata": pb.ModelMetadataRequest,
    "ModelInfer": pb.ModelInferRequest,
}


async def start(backend: Backend, host: str, port: int) -> grpc.aio.Server:
    """A started ``grpc.aio`` server on ``host:port`` in this worker (``SO_REUSEPORT``)."""
    servicer = InferenceServicer(backend)
    handlers = {
        method: _handler(backend.plane.metrics, method, getattr(servicer, method), message)
        for method, message in METHODS.items()
    }
    limit = backend.plane.cfg.max_body_bytes + MESSAGE_OVERHEAD
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
        ]
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if server.add_insecure_port(address) == 0:
        raise OSError(f"gRPC: cannot listen on {address}")
    await server.start()
    log.info("gRPC (Open Inference Protocol) on %s", address)
    return server
