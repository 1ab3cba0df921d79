"""The Open Inference Protocol ("v2": KServe, Triton, MLServer) over HTTP, for the same models.

Platforms that run KServe or Triton talk to every model through this protocol, with ready-made
clients (``tritonclient``, the ``kserve`` SDK) and load generators. This module only translates:
an infer request becomes either pixels at the model's native size or encoded image files, which
the service then sends down the same path as ``/predict`` (admission, the runtime's engine,
metrics); the scores come back as protocol outputs. Nothing here imports BentoML or runs a model.

What a model takes and gives (``GET /v2/models/NAME`` says the same):

- input ``image``: ``UINT8`` or ``FP32`` ``[N, H, W, C]`` at the model's input contract
  (``FP32`` values within its value range, raw pixels 0-255), or
- input ``image_bytes``: ``BYTES`` ``[N]``, each element an image file (PNG, JPEG, ...)
  decoded exactly as ``/predict`` decodes it; base64 strings when sent inside JSON.
- output ``probabilities``: ``FP32 [N, num_classes]``; with the classification extension
  (``parameters: {"classification": k}`` on the output) ``BYTES [N, k]`` strings
  ``"score:index:label"``, best first, as Triton answers.

Tensors travel as JSON ``data`` or with the binary tensor data extension (the
``Inference-Header-Content-Length`` header, which the standard clients use by default).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from handserve import artifacts, integers
from handserve.artifacts import Manifest
from handserve.hand_pipeline import LANDMARK_TENSORS
from service.errors import ApiError
from service.parsing import b64decode
from service.schemas import MAX_INT_DIGITS, MAX_NAME_LENGTH, PositiveInt, describe_validation
from service.v2_wire import OUTPUT, Output, deserialize_bytes, split_body

if TYPE_CHECKING:
    from service.dataplane import DataPlane
    from service.registry import LoadedModel

TENSOR_INPUT = "image"
BYTES_INPUT = "image_bytes"
#: Protocol extensions this server implements (reported by ``GET /v2``).
EXTENSIONS = ["classification", "binary_tensor_data"]
#: Tensor datatypes the ``image`` input accepts, little-endian as the protocol sends them.
TENSOR_TYPES: dict[str, np.dtype[Any]] = {"UINT8": np.dtype("u1"), "FP32": np.dtype("<f4")}
#: More dimensions than this is not an image batch; refused before computing any size.
MAX_DIMS = 8
#: No dimension is larger (int32, as Triton's shapes): keeps sizes and error messages bounded.
MAX_DIM = 2**31 - 1


class InferInputTensor(BaseModel):
    """One entry of ``inputs`` in an infer request (the protocol's ``$request_input``)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=MAX_NAME_LENGTH)
    shape: list[Annotated[int, Field(ge=0, le=MAX_DIM)]] = Field(max_length=MAX_DIMS)
    datatype: str = Field(max_length=16)
    parameters: dict[str, Any] | None = None
    data: Any = None


class RequestedOutput(BaseModel):
    """One entry of ``outputs`` (``$request_output``); unknown parameters are ignored."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=MAX_NAME_LENGTH)
    parameters: dict[str, Any] | None = None


class InferRequestBody(BaseModel):
    """The JSON part of an infer request (``$inference_request``).

    Other top-level keys are ignored: the kserve SDK sends ``model_name`` as well.
    """

    model_config = ConfigDict(extra="ignore")

    id: str | None = Field(None, max_length=256)
    parameters: dict[str, Any] | None = None
    inputs: list[InferInputTensor] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None


class _OutputParams(BaseModel):
    model_config = ConfigDict(extra="ignore")

    classification: PositiveInt | None = None
    binary_data: StrictBool | None = None


class _RequestParams(BaseModel):
    model_config = ConfigDict(extra="ignore")

    binary_data_output: StrictBool = False


@dataclass(frozen=True)
class InferCall:
    """An infer request ready for the engine: pixels or encoded files, and what to answer."""

    id: str | None
    outputs: list[Output]
    pixels: np.ndarray | None = None  # (N, H, W, C) at the model's contract
    files: list[bytes] | None = None  # encoded images, decoded like /predict's
    #: a hand as MediaPipe's HandLandmarker reports it (a hand-feature head): name -> float32
    landmarks: dict[str, np.ndarray] | None = None

    @property
    def count(self) -> int:
        if self.landmarks is not None:
            return 1
        return len(self.files) if self.files is not None else len(self.pixels)  # type: ignore[arg-type]


def parse_version(version: str | None) -> int | None:
    """A version from the URL path (or gRPC's ``model_version``); one that is not a number is a
    version not served. An empty version (gRPC's default) means the served one."""
    if not version:
        return None
    number = integers.ascii_int(version, MAX_INT_DIGITS)
    if number is None:
        raise ApiError("unknown_version", f"version {version[:20]!r} is not served")
    return number


# ---------------------------------------------------------------------- the data plane
def resolve(plane: DataPlane, name: str, version: str | None) -> LoadedModel:
    """The served model a protocol request names: the name from the path (or the message),
    the version as a string (empty or None: the served one)."""
    plane.check_ready()
    return plane.resolve(name, parse_version(version))


async def scores(plane: DataPlane, model: LoadedModel, call: InferCall) -> np.ndarray:
    """The scores of a checked infer call (REST or gRPC): its tensor, its encoded images, or
    a hand's landmark tensors."""
    if call.landmarks is not None:
        return await plane.classify_landmarks(model, call.landmarks)
    if call.pixels is not None:
        return await plane.classify_tensors(model, call.pixels)
    return await plane.classify(model, call.files or [])


def metadata_of(model: LoadedModel) -> dict[str, Any]:
    """:func:`model_metadata` of a served model."""
    return model_metadata(model.name, model.version, model.runtime.name, model.manifest)


# ---------------------------------------------------------------------- metadata
def server_metadata(version: str) -> dict[str, Any]:
    return {"name": "handserve", "version": version, "extensions": EXTENSIONS}


def model_metadata(name: str, version: int, runtime: str, manifest: Manifest) -> dict[str, Any]:
    """``$metadata_model_response``: the inputs and outputs with names, types and shapes.

    A hand-feature head takes a photo (``image_bytes``) or, instead, one hand as MediaPipe's
    HandLandmarker reports it: the four FP32 tensors of :data:`LANDMARK_TENSORS`, sent together.
    """
    if manifest.hand_features is not None:
        inputs = [
            {"name": BYTES_INPUT, "datatype": "BYTES", "shape": [-1]},
            *(
                {"name": n, "datatype": "FP32", "shape": list(shape)}
                for n, shape in LANDMARK_TENSORS.items()
            ),
        ]
    else:
        contract = manifest.image
        shape = [-1, contract.height, contract.width, contract.channels]
        inputs = [
            {"name": TENSOR_INPUT, "datatype": "UINT8", "shape": shape},
            {"name": BYTES_INPUT, "datatype": "BYTES", "shape": [-1]},
        ]
    return {
        "name": name,
        "versions": [str(version)],
        "platform": artifacts.PLATFORMS[runtime],
        "inputs": inputs,
        "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, len(manifest.labels)]}],
    }


# ---------------------------------------------------------------------- requests
def parse_infer(
    body: bytes, header_length: str | None, manifest: Manifest, max_images: int
) -> InferCall:
    """Validate an infer request over REST against the model's contract; every problem is a 4xx."""
    data, binary = split_body(body, header_length)
    parts = _BinaryParts(binary)
    call = build_call(data, manifest, max_images, parts.take)
    parts.check_consumed()
    return call


def build_call(
    data: dict[str, Any],
    manifest: Manifest,
    max_images: int,
    raw_of: Callable[[int, InferInputTensor, int], bytes | None],
) -> InferCall:
    """An infer request (``$inference_request`` as a mapping, from JSON or from gRPC's message)
    checked against the model's contract: the one validation of both transports.

    ``raw_of(index, tensor, count)`` gives input ``index`` (of ``count``)'s bytes when they came
    outside ``data`` (binary tensor data over REST, ``raw_input_contents`` over gRPC), None when
    ``data`` holds the values; it is called once per input, in order.
    A ``BYTES`` element that is ``bytes`` is an image file as it is (gRPC's
    ``bytes_contents``); a string is base64 (JSON).
    """
    try:
        req = InferRequestBody.model_validate(data)
        request_params = _RequestParams.model_validate(req.parameters or {})
    except ValidationError as exc:
        raise ApiError("bad_request", describe_validation(exc, "request")) from None
    # What to answer is checked before any tensor is read: the cheaper refusal first.
    outputs = _outputs(req.outputs, request_params.binary_data_output, len(manifest.labels))
    hand = manifest.hand_features is not None
    if hand and any(t.name in LANDMARK_TENSORS for t in req.inputs):
        raws = [raw_of(i, t, len(req.inputs)) for i, t in enumerate(req.inputs)]
        return InferCall(id=req.id, outputs=outputs, landmarks=_landmarks(req.inputs, raws))
    if len(req.inputs) != 1:
        takes = (
            f"{BYTES_INPUT!r}, or the hand as {', '.join(map(repr, LANDMARK_TENSORS))}"
            if hand
            else f"{TENSOR_INPUT!r} or {BYTES_INPUT!r}"
        )
        raise ApiError("bad_request", f"send one input, {takes}; got {len(req.inputs)}")
    tensor = req.inputs[0]
    raw = raw_of(0, tensor, 1)
    if tensor.name == TENSOR_INPUT and not hand:
        pixels = _pixels(tensor, raw, manifest, max_images)
        call_in: dict[str, Any] = {"pixels": pixels}
    elif tensor.name == BYTES_INPUT:
        call_in = {"files": _files(tensor, raw, max_images)}
    elif hand:
        raise ApiError(
            "bad_request",
            f"unknown input {tensor.name[:40]!r}; this hand-feature model takes {BYTES_INPUT!r} "
            f"(BYTES [N] photos) or a hand as {', '.join(map(repr, LANDMARK_TENSORS))}",
        )
    else:
        raise ApiError(
            "bad_request",
            f"unknown input {tensor.name[:40]!r}; this model takes {TENSOR_INPUT!r} "
            f"(UINT8 or FP32 {_contract_shape(manifest)}) or {BYTES_INPUT!r} (BYTES [N])",
        )
    return InferCall(id=req.id, outputs=outputs, **call_in)


def _landmarks(tensors: list[InferInputTensor], raws: list[bytes | None]) -> dict[str, np.ndarray]:
    """A hand's :data:`LANDMARK_TENSORS`, each FP32 of its shape with finite values."""
    names = [t.name for t in tensors]
    if sorted(names) != sorted(LANDMARK_TENSORS):
        raise ApiError(
            "bad_request",
            f"a hand is the inputs {sorted(LANDMARK_TENSORS)} together; got {sorted(names)[:8]}",
        )
    out = {}
    for tensor, raw in zip(tensors, raws, strict=True):
        shape = list(LANDMARK_TENSORS[tensor.name])
        where = f"input {tensor.name!r}"
        if tensor.datatype != "FP32" or tensor.shape != shape:
            raise ApiError(
                "bad_request",
                f"{where} must be FP32 {shape}, got {tensor.datatype[:16]} {tensor.shape}",
            )
        count = int(np.prod(shape))
        if raw is not None:
            if len(raw) != count * 4:
                raise ApiError(
                    "bad_request", f"{where}: {len(raw):,} bytes; FP32 {shape} needs {count * 4}"
                )
            values = np.frombuffer(raw, "<f4")
        else:
            try:
                values = np.asarray(tensor.data, dtype=np.float32).ravel()
            except (ValueError, TypeError):
                raise ApiError("bad_request", f"{where}: data must be numbers") from None
            if values.size != count:
                raise ApiError(
                    "bad_request", f"{where}: data holds {values.size} values, needs {count}"
                )
        if not np.isfinite(values).all():
            raise ApiError("bad_request", f"{where}: values must be finite")
        out[tensor.name] = values.astype(np.float32).reshape(shape)
    return out


class _BinaryParts:
    """The bytes after the inference header, handed to the inputs in order, each its
    ``binary_data_size``; every byte must belong to an input."""

    def __init__(self, binary: bytes) -> None:
        self.binary = binary
        self.offset = 0

    def take(self, index: int, tensor: InferInputTensor, count: int) -> bytes | None:
        """Input ``index``'s bytes, or None when it came as JSON ``data``."""
        rest = len(self.binary) - self.offset
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is None:
            if rest and index == count - 1:
                raise ApiError(
                    "bad_request",
                    f"{rest:,} bytes follow the inference header but input "
                    f"{tensor.name[:40]!r} declares no binary_data_size",
                )
            if tensor.data is None:
                raise ApiError("bad_request", f"input {tensor.name[:40]!r} has no data")
            return None
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ApiError("bad_request", "binary_data_size must be a whole number of bytes")
        if tensor.data is not None:
            raise ApiError("bad_request", "an input has either data or binary_data_size, not both")
        if size > rest or (index == count - 1 and size != rest):
            raise ApiError(
                "bad_request",
                f"input {tensor.name[:40]!r} declares binary_data_size {size:,} but "
                f"{rest:,} bytes follow (of the inference header's {len(self.binary):,})",
            )
        part = self.binary[self.offset : self.offset + size]
        self.offset += size
        return part

    def check_consumed(self) -> None:
        if self.offset != len(self.binary) and self.offset:
            raise ApiError(
                "bad_request",
                f"{len(self.binary) - self.offset:,} bytes follow the inputs' binary data",
            )


def _contract_shape(manifest: Manifest) -> str:
    c = manifest.image
    return f"[N, {c.height}, {c.width}, {c.channels}]"


def _batch_size(shape: list[int], max_images: int, name: str) -> int:
    n = shape[0] if shape else 0
    if n < 1:
        raise ApiError("empty", f"input {name!r} holds no image (shape {shape})")
    if n > max_images:
        raise ApiError("too_many_images", f"{n} images, over the limit of {max_images} per request")
    return n


def _pixels(
    tensor: InferInputTensor, raw: bytes | None, manifest: Manifest, max_images: int
) -> np.ndarray:
    """The ``image`` tensor, checked against the contract: shape, datatype, values."""
    dtype = TENSOR_TYPES.get(tensor.datatype)
    if dtype is None:
        raise ApiError(
            "bad_request",
            f"input {TENSOR_INPUT!r} has datatype {tensor.datatype[:16]!r}; use UINT8 or FP32",
        )
    c = manifest.image
    if len(tensor.shape) != 4 or tensor.shape[1:] != [c.height, c.width, c.channels]:
        raise ApiError(
            "bad_request",
            f"input {TENSOR_INPUT!r} has shape {tensor.shape}; this model takes "
            f"{_contract_shape(manifest)} (send other sizes as {BYTES_INPUT!r})",
        )
    n = _batch_size(tensor.shape, max_images, TENSOR_INPUT)
    count = n * c.height * c.width * c.channels
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise ApiError(
                "bad_request",
                f"input {TENSOR_INPUT!r}: {len(raw):,} bytes of binary data, but shape "
                f"{tensor.shape} of {tensor.datatype} needs {count * dtype.itemsize:,}",
            )
        values = np.frombuffer(raw, dtype)
    else:
        values = _json_numbers(tensor.data, count, tensor.datatype)
    pixels = values.reshape(n, c.height, c.width, c.channels)
    if dtype.kind == "f":
        low, high = c.value_range
        if not np.isfinite(pixels).all() or pixels.min() < low or pixels.max() > high:
            raise ApiError(
                "bad_request",
                f"input {TENSOR_INPUT!r}: FP32 values must be finite and within "
                f"[{low:g}, {high:g}] (raw pixel values)",
            )
    return pixels


def _json_numbers(data: Any, count: int, datatype: str) -> np.ndarray:
    """JSON ``data`` (flat or nested, row-major) as a flat array of ``datatype``."""
    try:
        values = np.asarray(data)
    except (ValueError, TypeError):  # ragged nested lists
        raise ApiError(
            "bad_request", f"input {TENSOR_INPUT!r}: data is not a regular array"
        ) from None
    if values.size != count:
        raise ApiError(
            "bad_request",
            f"input {TENSOR_INPUT!r}: data holds {values.size:,} values; the shape needs {count:,}",
        )
    if datatype == "UINT8":
        if values.dtype.kind not in "iu" or values.min() < 0 or values.max() > 255:
            raise ApiError(
                "bad_request", f"input {TENSOR_INPUT!r}: UINT8 data must be whole numbers 0-255"
            )
        return values.astype(np.uint8).ravel()
    if values.dtype.kind not in "iuf":
        raise ApiError("bad_request", f"input {TENSOR_INPUT!r}: FP32 data must be numbers")
    return values.astype(np.float32).ravel()


def _files(tensor: InferInputTensor, raw: bytes | None, max_images: int) -> list[bytes]:
    """The ``image_bytes`` elements: length-prefixed in binary, base64 strings in JSON."""
    if tensor.datatype != "BYTES":
        raise ApiError(
            "bad_request", f"input {BYTES_INPUT!r} has datatype {tensor.datatype[:16]!r}; use BYTES"
        )
    if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
        raise ApiError(
            "bad_request", f"input {BYTES_INPUT!r} has shape {tensor.shape}; use [N] (or [N, 1])"
        )
    n = _batch_size(tensor.shape, max_images, BYTES_INPUT)
    if raw is not None:
        files = deserialize_bytes(raw)
    else:
        if not isinstance(tensor.data, list):
            raise ApiError("bad_request", f"input {BYTES_INPUT!r}: data must be a list")
        items = enumerate(_flatten(tensor.data, n))
        files = [v if isinstance(v, bytes) else b64decode(v, i) for i, v in items]
    if len(files) != n:
        raise ApiError(
            "bad_request", f"input {BYTES_INPUT!r} holds {len(files)} elements; its shape says {n}"
        )
    return files


def _flatten(data: list[Any], limit: int) -> list[Any]:
    """``[a, b]`` or ``[[a], [b]]`` (shape [N, 1]) as ``[a, b]``; stops past ``limit``."""
    out: list[Any] = []
    for item in data[: limit + 1]:
        out.extend(item[:2] if isinstance(item, list) else [item])
    return out


def _outputs(
    requested: list[RequestedOutput] | None, binary_default: bool, num_classes: int
) -> list[Output]:
    if not requested:
        return [Output(0, binary_default)]
    out = []
    for item in requested:
        if item.name != OUTPUT:
            raise ApiError(
                "bad_request", f"unknown output {item.name[:40]!r}; this model gives {OUTPUT!r}"
            )
        try:
            params = _OutputParams.model_validate(item.parameters or {})
        except ValidationError as exc:
            raise ApiError("bad_request", describe_validation(exc, "output")) from None
        binary = binary_default if params.binary_data is None else params.binary_data
        out.append(Output(min(params.classification or 0, num_classes), binary))
    return out


def openapi() -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of the infer routes: the JSON header, or it plus binary."""
    schema = InferRequestBody.model_json_schema()
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema}, "application/octet-stream": binary},
        }
    }
