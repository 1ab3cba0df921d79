"""The image API's front end (``/predict``, ``/predict_batch``) and the typed BentoML endpoints'
(``/classify``, ``/classify_batch``, ``/classify_landmarks``): a request in, data plane calls,
the answer out.

The routes are declared on the service class (:mod:`service.service`); their work is here, as
the Open Inference Protocol's is in :mod:`service.v2_http` and :mod:`service.v2_grpc`. Refusals
are :class:`~service.errors.ApiError`; the typed endpoints turn them into BentoML's exception
(:func:`refusals_as_bentoml`), which BentoML answers with the same status.
"""

from __future__ import annotations

from collections.abc import Awaitable
from http import HTTPStatus
from pathlib import Path
from typing import Any

import numpy as np
from bentoml.exceptions import BentoMLException
from starlette.requests import Request

from handserve.ranking import top_k
from service.dataplane import DataPlane
from service.errors import REFUSAL_KEY, ApiError, is_input_error
from service.parsing import parse_request, query_params, read_files
from service.registry import LoadedModel

#: A served model and the scores of every image of a request, in order.
Scored = tuple[LoadedModel, np.ndarray]


async def classify_request(plane: DataPlane, request: Request, *, batch: bool) -> Any:
    """``/predict`` (one image) or ``/predict_batch``: parse the request, then the data
    plane's scores; the answer's JSON (``PredictResponse`` or ``PredictBatchResponse``)."""
    cfg = plane.cfg
    await plane.wait_ready()  # before reading the body: a loading server refuses now
    parsed = await parse_request(
        request,
        batch=batch,
        max_body_bytes=cfg.max_body_bytes,
        max_images=cfg.max_batch_images if batch else 1,
        body_timeout_s=cfg.body_timeout_s,
        query=query_params(request.scope.get("query_string", b"")),
    )
    params = parsed.params
    model = plane.resolve(params.model, params.version)
    scores = await plane.classify(model, parsed.images)
    k = params.top_k or cfg.top_k
    return answer_batch(model, scores, k) if batch else answer(model, scores, k)


def answer(model: LoadedModel, scores: np.ndarray, k: int) -> dict[str, Any]:
    """One image's answer: the model, its version and the ``k`` best classes, best first."""
    return {"model": model.name, "version": model.version, **_ranked(scores[0], model, k)}


def answer_batch(model: LoadedModel, scores: np.ndarray, k: int) -> dict[str, Any]:
    """Several images' answer: one ranked result per image, in the request's order."""
    results = [_ranked(row, model, k) for row in scores]
    return {"model": model.name, "version": model.version, "results": results}


def _ranked(scores: np.ndarray, model: LoadedModel, k: int) -> dict[str, Any]:
    return {"predictions": top_k(scores, model.manifest.labels, k)}


async def classify_files(
    plane: DataPlane, files: list[Path], name: str | None, version: int | None
) -> Scored:
    """The typed image endpoints: the files BentoML saved from the form, checked as /predict
    checks its body, then the data plane."""
    blobs = read_files(files, plane.cfg.max_batch_images, plane.cfg.max_body_bytes)
    await plane.wait_ready()
    model = plane.resolve(name, version)
    return model, await plane.classify(model, blobs)


async def classify_landmarks(
    plane: DataPlane, name: str | None, version: int | None, hand: dict[str, Any]
) -> Scored:
    """``/classify_landmarks``: one hand as JSON (21 image and 21 world landmarks, the
    handedness score, the image size) as the data plane's landmark tensors."""
    tensors = {
        "image_landmarks": np.asarray(hand["image_landmarks"], np.float32),
        "world_landmarks": np.asarray(hand["world_landmarks"], np.float32),
        "handedness": np.asarray([[hand["handedness"]]], np.float32),
        "image_size": np.asarray([hand["image_size"]], np.float32),
    }
    await plane.wait_ready()
    model = plane.resolve(name, version)
    return model, await plane.classify_landmarks(model, tensors)


async def refusals_as_bentoml(request: Request, metrics: Any, work: Awaitable[Scored]) -> Scored:
    """``await work``; an ApiError becomes BentoML's error with the same status (BentoML
    answers an exception of its own with that status, anything else 500), and is left in the
    request's state, where ``service.errors.JSONErrors`` renders it as /predict would: the same
    body, the same ``Retry-After``."""
    try:
        return await work
    except ApiError as err:
        if is_input_error(err.code):
            metrics.rejected_inputs.labels(reason=err.code).inc()
        setattr(request.state, REFUSAL_KEY, err)
        raise BentoMLException(
            f"{err.code}: {err.message}", error_code=HTTPStatus(err.status)
        ) from None
