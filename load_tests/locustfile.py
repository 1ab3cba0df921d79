"""Load test for the handserve API: users posting PNG digits to /predict and /predict_batch.

    locust -f load_tests/locustfile.py --headless -u 32 -r 8 -t 60s --host http://localhost:3000

Three tasks, weighted like a mix of app and batch clients: one image as multipart form data
(weight 4), one image as a raw ``image/png`` body (2), and a multipart batch of several images (1).
Every response is checked for status 200 and the documented shape (predictions sorted by score,
scores in [0, 1], one result per image in a batch); anything else counts as a failure, with the
service's error code in the message. The images are real handwritten digits (scikit-learn's
embedded 8×8 set, upscaled to 28×28), so the work is what a real client sends.

Environment:
    HANDSERVE_MODEL       model name to ask for (default: the server's default model)
    HANDSERVE_TOP_K       top_k to ask for (default 3)
    HANDSERVE_BATCH_SIZE  images per /predict_batch request (default 8)
"""

from __future__ import annotations

import functools
import io
import os
import random
from typing import Any

from locust import HttpUser, between, task

MODEL = os.environ.get("HANDSERVE_MODEL") or None
TOP_K = int(os.environ.get("HANDSERVE_TOP_K", "3"))
BATCH_SIZE = int(os.environ.get("HANDSERVE_BATCH_SIZE", "8"))
IMAGE_SIZE = 28  # MNIST's size; the service resizes to whatever the model takes


@functools.cache
def digit_pngs(count: int = 64) -> tuple[bytes, ...]:
    """``count`` real handwritten digits as PNG files, white on black like MNIST (cached)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    images = load_digits().images[:count]  # (N, 8, 8) floats 0..16
    out = []
    for pixels in images:
        img = Image.fromarray((pixels * (255 / 16)).astype("uint8"), mode="L")
        img = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append(buf.getvalue())
    return tuple(out)


def _params() -> dict[str, str]:
    params = {"top_k": str(TOP_K)}
    if MODEL:
        params["model"] = MODEL
    return params


def multipart_request(png: bytes) -> dict[str, Any]:
    """Keyword arguments for ``client.post``: one image as the multipart field ``file``."""
    return {"files": {"file": ("digit.png", png, "image/png")}, "data": _params()}


def raw_request(png: bytes) -> dict[str, Any]:
    """One image as the raw request body, options in the query string."""
    return {"data": png, "params": _params(), "headers": {"Content-Type": "image/png"}}


def batch_request(pngs: list[bytes]) -> dict[str, Any]:
    """Several images as repeated multipart fields ``files``."""
    files = [("files", (f"digit{i}.png", png, "image/png")) for i, png in enumerate(pngs)]
    return {"files": files, "data": _params()}


def check_predictions(predictions: Any) -> str | None:
    """The problem with one ``predictions`` list, or None when it has the documented shape."""
    if not isinstance(predictions, list) or not predictions:
        return "predictions is not a non-empty list"
    if len(predictions) > TOP_K:
        return f"{len(predictions)} predictions for top_k={TOP_K}"
    for p in predictions:
        if not isinstance(p, dict) or not {"label", "index", "score"} <= set(p):
            return f"prediction without label/index/score: {p!r}"
        if not 0.0 <= float(p["score"]) <= 1.0:
            return f"score out of [0, 1]: {p['score']!r}"
    scores = [float(p["score"]) for p in predictions]
    if scores != sorted(scores, reverse=True):
        return "predictions are not sorted by score"
    return None


def check_response(status: int, body: Any, n_images: int | None = None) -> str | None:
    """The problem with a /predict (``n_images`` None) or /predict_batch answer, or None."""
    if status != 200:
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            return f"HTTP {status} {error.get('code')}: {error.get('message')}"
        return f"HTTP {status}"
    if not isinstance(body, dict) or not {"model", "version"} <= set(body):
        return "response without model/version"
    if n_images is None:
        return check_predictions(body.get("predictions"))
    results = body.get("results")
    if not isinstance(results, list) or len(results) != n_images:
        return f"expected {n_images} results, got {results if results is None else len(results)}"
    for result in results:
        problem = check_predictions(result.get("predictions") if isinstance(result, dict) else None)
        if problem:
            return problem
    return None


class PredictUser(HttpUser):
    """A client sending digits as fast as the server answers, with a little jitter."""

    wait_time = between(0.0, 0.05)

    def _post(self, path: str, name: str, kwargs: dict[str, Any], n_images: int | None) -> None:
        with self.client.post(path, name=name, catch_response=True, **kwargs) as resp:
            try:
                body = resp.json()
            except ValueError:
                body = None
            problem = check_response(resp.status_code, body, n_images)
            if problem:
                resp.failure(problem)
            else:
                resp.success()

    @task(4)
    def predict_multipart(self) -> None:
        png = random.choice(digit_pngs())
        self._post("/predict", "/predict [multipart]", multipart_request(png), None)

    @task(2)
    def predict_raw(self) -> None:
        png = random.choice(digit_pngs())
        self._post("/predict", "/predict [raw]", raw_request(png), None)

    @task(1)
    def predict_batch(self) -> None:
        pngs = random.sample(digit_pngs(), BATCH_SIZE)
        self._post("/predict_batch", "/predict_batch", batch_request(pngs), len(pngs))
