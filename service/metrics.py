"""The service's Prometheus metrics, created inside the worker process.

BentoML workers set ``PROMETHEUS_MULTIPROC_DIR`` after importing the service module and expose
every worker's values through one ``/metrics``; ``prometheus_client`` picks its multiprocess
value store when it is first imported. So this module imports it only in :func:`create` (called
from the service's ``__init__``), and the gauge uses ``multiprocess_mode="max"`` so several
workers report one ``model_info`` series per model instead of one per process.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Seconds: 0.5 ms to 10 s, enough resolution for a 1 ms LiteRT batch and a slow GPU start.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


def batch_buckets(max_batch_size: int) -> tuple[float, ...]:
    """1, 2, 4, ... up to the largest batch: shows at a glance whether batching happens."""
    out, n = [], 1
    while n < max_batch_size:
        out.append(float(n))
        n *= 2
    out.append(float(max_batch_size))
    return tuple(out)


@dataclass
class Metrics:
    predictions: Any
    inference_seconds: Any
    preprocess_seconds: Any
    batch_size: Any
    batch_wait_seconds: Any
    rejected_inputs: Any
    model_info: Any
    grpc_requests: Any
    grpc_seconds: Any
    rebalanced: Any
    worker_connections: Any
    worker_cpu: Any
    #: (name, version, runtime) -> that model's labelled series, made once (see :meth:`of`).
    _series: dict[tuple[str, str, str], ModelSeries] = field(default_factory=dict)

    def of(self, name: str, version: str, runtime: str) -> ModelSeries:
        """The labelled series one model version's calls are counted in.

        ``labels(...)`` checks and looks up its arguments on every call (about 1.5 µs each with
        the multiprocess directory the server uses, several per request); the child it returns
        is the same every time, so it is looked up once per model version here.
        """
        key = (name, version, runtime)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = ModelSeries(
                inference_seconds=self.inference_seconds.labels(name, version, runtime),
                batch_size=self.batch_size.labels(name),
                predictions=functools.partial(self.predictions.labels, name, version),
            )
        return series


@dataclass
class ModelSeries:
    """One model version's series: its model-call time, batch sizes, and top-1 labels (each
    label's counter made on first use)."""

    inference_seconds: Any
    batch_size: Any
    predictions: Callable[[str], Any]
    _by_label: dict[str, Any] = field(default_factory=dict)

    def predicted(self, label: str) -> None:
        """Count one image whose top-1 class is ``label``."""
        counter = self._by_label.get(label)
        if counter is None:
            counter = self._by_label[label] = self.predictions(label)
        counter.inc()


def create(max_batch_size: int, registry: Any = None) -> Metrics:
    """Build the metrics in the default registry (or ``registry``, for unit tests)."""
    import prometheus_client as pc

    kw: dict[str, Any] = {} if registry is None else {"registry": registry}
    return Metrics(
        predictions=pc.Counter(
            "handserve_predictions_total",
            "Images classified, by the top-1 label",
            ["model", "version", "label"],
            **kw,
        ),
        inference_seconds=pc.Histogram(
            "handserve_inference_seconds",
            "Runtime time per batch (model call only)",
            ["model", "version", "runtime"],
            buckets=LATENCY_BUCKETS,
            **kw,
        ),
        preprocess_seconds=pc.Histogram(
            "handserve_preprocess_seconds",
            "Decode + resize time per image",
            buckets=LATENCY_BUCKETS,
            **kw,
        ),
        batch_size=pc.Histogram(
            "handserve_batch_size",
            "Images per runtime batch",
            ["model"],
            buckets=batch_buckets(max_batch_size),
            **kw,
        ),
        batch_wait_seconds=pc.Histogram(
            "handserve_batch_wait_seconds",
            "Time each image waited from enqueue to the start of its batch",
            buckets=LATENCY_BUCKETS,
            **kw,
        ),
        rejected_inputs=pc.Counter(
            "handserve_rejected_inputs_total",
            "Requests refused for what they sent, by reason (the error code)",
            ["reason"],
            **kw,
        ),
        model_info=pc.Gauge(
            "handserve_model_info",
            "1 for each model version being served",
            ["name", "version", "runtime", "sha256"],
            multiprocess_mode="max",
            **kw,
        ),
        # BentoML's HTTP metrics do not see the gRPC port (service.v2_grpc): its own.
        grpc_requests=pc.Counter(
            "handserve_grpc_requests_total",
            "Open Inference Protocol gRPC calls, by method and status code",
            ["method", "code"],
            **kw,
        ),
        grpc_seconds=pc.Histogram(
            "handserve_grpc_request_seconds",
            "Time per gRPC call, from the decoded message to the answer",
            ["method"],
            buckets=LATENCY_BUCKETS,
            **kw,
        ),
        rebalanced=pc.Counter(
            "handserve_rebalanced_connections_total",
            "Keep-alive connections a busy worker closed so an idle worker takes them",
            **kw,
        ),
        # One series per live worker process (prometheus_client adds a `pid` label): whether
        # the workers share the load shows here, not only in the summed counters.
        worker_connections=pc.Gauge(
            "handserve_worker_connections",
            "HTTP connections that sent this worker a request in the last second",
            multiprocess_mode="liveall",
            **kw,
        ),
        worker_cpu=pc.Gauge(
            "handserve_worker_cpu_share",
            "Share of one CPU core this worker used over the last tenth of a second",
            multiprocess_mode="liveall",
            **kw,
        ),
    )
