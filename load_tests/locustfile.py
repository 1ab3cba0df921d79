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

The run gates (exit code 1 when breached, 0 when met, as CI and a Kubernetes Job read it):
    --max-p95-ms / LOCUST_MAX_P95_MS        p95 of all requests, ms (default 500; 0 = no gate)
    --max-error-pct / LOCUST_MAX_ERROR_PCT  failed requests, % (default 1)
and the load follows ``--shape`` / ``LOCUST_SHAPE``: ``constant`` (-u users, as plain locust),
``ramp`` (-u in four equal steps over -t) or ``spike`` (a tenth of -u, then all of -u at once
for the middle third of -t, then back).
"""

from __future__ import annotations

import argparse
import functools
import io
import logging
import os
import random
from typing import Any

from locust import HttpUser, LoadTestShape, between, events, task
from locust.env import Environment
from locust.runners import WorkerRunner

MODEL = os.environ.get("HANDSERVE_MODEL") or None
TOP_K = int(os.environ.get("HANDSERVE_TOP_K", "3"))
BATCH_SIZE = int(os.environ.get("HANDSERVE_BATCH_SIZE", "8"))
IMAGE_SIZE = 28  # MNIST's size; the service resizes to whatever the model takes
SHAPES = ("constant", "ramp", "spike")
#: Length of a ramp or spike run started without --run-time, in seconds.
DEFAULT_SHAPE_SECONDS = 60.0

log = logging.getLogger("handserve.loadtest")


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


@events.init.add_listener
def load_images(**_kwargs: Any) -> None:
    """Make the digits before any user starts (on every worker of a distributed run).

    Done in a user's first task instead, importing scikit-learn took about 3 s on 2 busy cores:
    the users sent nothing for the first 3 s of the run, and a 3-second run sent no request.
    """
    digit_pngs()


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


# --------------------------------------------------------------------------- gates and shape


@events.init_command_line_parser.add_listener
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The thresholds and the shape, as flags or LOCUST_* variables (locust's own convention)."""
    parser.add_argument(
        "--max-p95-ms",
        type=float,
        default=500.0,
        env_var="LOCUST_MAX_P95_MS",
        help="exit code 1 when the p95 response time of all requests exceeds this (0: no gate)",
    )
    parser.add_argument(
        "--max-error-pct",
        type=float,
        default=1.0,
        env_var="LOCUST_MAX_ERROR_PCT",
        help="exit code 1 when more than this percentage of requests failed",
    )
    parser.add_argument(
        "--shape",
        choices=SHAPES,
        default="constant",
        env_var="LOCUST_SHAPE",
        help="constant (-u users), ramp (four steps up to -u over -t) or spike (-u/10, -u, -u/10)",
    )


def breaches(
    num_requests: int, num_failures: int, p95_ms: float, max_p95_ms: float, max_error_pct: float
) -> list[str]:
    """What a finished run breached, each naming its flag; empty when the run passes."""
    if num_requests == 0:
        return ["no request was made (is --host right?)"]
    problems = []
    error_pct = 100.0 * num_failures / num_requests
    if error_pct > max_error_pct:
        problems.append(f"error rate {error_pct:.2f}% > {max_error_pct:g}% (--max-error-pct)")
    if max_p95_ms > 0 and p95_ms > max_p95_ms:
        problems.append(f"p95 {p95_ms:g} ms > {max_p95_ms:g} ms (--max-p95-ms)")
    return problems


@events.quitting.add_listener
def gate(environment: Environment, **_kwargs: Any) -> None:
    """Set the process exit code from the thresholds (on the master, where the totals are)."""
    options = environment.parsed_options
    if isinstance(environment.runner, WorkerRunner) or options is None:
        return
    total = environment.stats.total
    p95 = total.get_response_time_percentile(0.95) or 0
    problems = breaches(
        total.num_requests, total.num_failures, p95, options.max_p95_ms, options.max_error_pct
    )
    if problems:
        log.error("load test FAILED its thresholds: %s", "; ".join(problems))
        environment.process_exit_code = 1
        return
    log.info(
        "load test passed: %d requests, %.2f%% failed, p95 %g ms",
        total.num_requests,
        100.0 * total.fail_ratio,
        p95,
    )
    # Failures within --max-error-pct pass; an exception in the locustfile still fails the run.
    if environment.runner is not None and not environment.runner.exceptions:
        environment.process_exit_code = 0


def stages(
    shape: str, users: int, spawn_rate: float, seconds: float
) -> list[tuple[float, int, float]]:
    """The load over time: (until this second, users, spawn rate per second) steps."""
    if shape == "constant":
        return [(seconds, users, spawn_rate)]
    if shape == "ramp":
        step = seconds / 4
        return [(step * i, max(1, users * i // 4), spawn_rate) for i in range(1, 5)]
    if shape == "spike":
        base = max(1, users // 10)
        burst = float(max(spawn_rate, users))  # all spike users at once
        return [
            (seconds * 0.3, base, spawn_rate),
            (seconds * 0.6, users, burst),
            (seconds, base, burst),
        ]
    raise ValueError(f"--shape/LOCUST_SHAPE: {shape!r} is not one of {', '.join(SHAPES)}")


class StagedShape(LoadTestShape):
    """Follows ``stages(--shape, -u, -r, -t)``; ``constant`` behaves as locust without a shape."""

    use_common_options = True  # read -u, -r and -t instead of ignoring them

    def tick(self) -> tuple[int, float] | None:
        assert self.runner is not None
        options = self.runner.environment.parsed_options
        assert options is not None, "a shape runs only from the locust command line"
        users, rate = int(options.num_users or 1), float(options.spawn_rate or 1)
        if options.shape == "constant" and not options.run_time:
            return users, rate  # until Ctrl-C, as plain locust
        seconds = float(options.run_time or DEFAULT_SHAPE_SECONDS)
        now = self.get_run_time()
        for until, stage_users, stage_rate in stages(options.shape, users, rate, seconds):
            if now < until:
                return stage_users, stage_rate
        return None
