"""The API's types: request parameters, bodies and answers, as pydantic models.

The service's routes take these as typed parameters and declare them as response models, so the
OpenAPI document (BentoML's ``/docs.json`` and Swagger page) comes from the types. The same
parameter types validate the query string (through FastAPI), multipart form fields and JSON
bodies (through :func:`parse_params`), so ``top_k=²`` is refused the same way in all three.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from handserve import integers

#: The longest model name accepted (and so the longest ever echoed back in an error).
MAX_NAME_LENGTH = 128
#: Integers are at most this many ASCII digits: enough for any version or top_k, far below the
#: 4,300 digits where Python refuses to parse (which was a 500 before).
MAX_INT_DIGITS = 9


def _strict_int(value: Any) -> Any:
    """Ints, or strings of ASCII digits only: ``²``, ``٣``, ``+-5``, ``1_0``, ``true`` are not.

    ``str.isdigit`` accepts superscripts and other scripts' digits, and pydantic's lax mode takes
    ``True`` and ``2.0``; neither is a number a client meant.
    """
    if isinstance(value, bool):
        raise ValueError("must be a whole number, not a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and (number := integers.ascii_int(value, MAX_INT_DIGITS)) is not None:
        return number
    raise ValueError(f"must be a whole number of 1 to {MAX_INT_DIGITS} ASCII digits")


PositiveInt = Annotated[int, BeforeValidator(_strict_int), Field(ge=1, le=10**MAX_INT_DIGITS - 1)]
ModelName = Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH)]

PARAMS = ("model", "version", "top_k")


class Params(BaseModel):
    """Which model answers and how many classes come back; every field optional."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelName | None = Field(None, description="model name (default: the default model)")
    version: PositiveInt | None = Field(None, description="model version (default: the latest)")
    top_k: PositiveInt | None = Field(None, description="how many classes to return, best first")


def describe_validation(exc: ValidationError | Any, where: str) -> str:
    """One short line per problem, naming the field; never echoes the (maybe huge) input."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "body"))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            msg = f"unknown {where} field; allowed: {', '.join(PARAMS)}"
        parts.append(f"{loc or where}: {msg}"[:200])
    return "; ".join(parts)


class Prediction(BaseModel):
    label: str
    index: int
    score: float


class PredictResponse(BaseModel):
    model: str
    version: int
    predictions: list[Prediction] = Field(description="best first")


class BatchItem(BaseModel):
    predictions: list[Prediction]


class PredictBatchResponse(BaseModel):
    model: str
    version: int
    results: list[BatchItem] = Field(description="one per image, in the order sent")


class PredictJSON(Params):
    """``application/json`` body of ``/predict``."""

    image: str = Field(description="the image file, base64 (a data: URL works too)")


class PredictBatchJSON(Params):
    """``application/json`` body of ``/predict_batch``."""

    images: list[str] = Field(description="image files, base64, answered in this order")


class PredictForm(Params):
    """``multipart/form-data`` body of ``/predict``: one file field (any name)."""

    file: bytes = Field(json_schema_extra={"format": "binary"})


class PredictBatchForm(Params):
    """``multipart/form-data`` body of ``/predict_batch``: one file field per image."""

    files: list[bytes] = Field(json_schema_extra={"items": {"type": "string", "format": "binary"}})


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable reason, see docs/service.md")
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


def query_parameters() -> list[dict[str, Any]]:
    """OpenAPI query parameters of a predict route, from :class:`Params`' JSON schema."""
    schema = Params.model_json_schema()
    return [
        {
            "name": name,
            "in": "query",
            "required": False,
            "description": prop.get("description", ""),
            "schema": next((s for s in prop.get("anyOf", [prop]) if s.get("type") != "null"), prop),
        }
        for name, prop in schema["properties"].items()
    ]


def predict_openapi(batch: bool) -> dict[str, Any]:
    """The OpenAPI parameters and ``requestBody`` of a predict route, built from the models.

    The route reads the raw request: FastAPI cannot express one route with three body forms
    through its parameters, and validating the query string through FastAPI's parameter
    machinery cost about 0.1 ms per request, as much as running the digits model. So the
    route's document is declared here, derived from the same types that validate the request
    (:func:`service.parsing.parse_params`).
    """
    json_model = PredictBatchJSON if batch else PredictJSON
    form_model = PredictBatchForm if batch else PredictForm
    content: dict[str, Any] = {
        "multipart/form-data": {"schema": form_model.model_json_schema()},
        "application/json": {"schema": json_model.model_json_schema()},
    }
    if not batch:
        raw = {"schema": {"type": "string", "format": "binary"}}
        content.update({"image/png": raw, "image/jpeg": raw, "application/octet-stream": raw})
    return {
        "parameters": query_parameters(),
        "requestBody": {"required": True, "content": content},
    }
