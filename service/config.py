"""``ServiceConfig``: every serving knob, with the reason for its default.

A :class:`handserve.configs.Settings` class, like training's: defaults < an optional
YAML/TOML/JSON file (``$HANDSERVE_CONFIG``) < ``HANDSERVE_<FIELD>`` environment variables
< ``handserve serve`` flags. The variables are a source here (and not in training) because
``bentoml serve`` starts worker processes that can only be configured through the environment:
``handserve serve`` checks its flags, then hands them to the workers as those variables
(:func:`to_env`). Every refusal is a :class:`handserve.configs.ConfigError` naming where the bad
value came from (the flag, the variable, or the file and key) and what is wrong with it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, StrictInt, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from handserve import artifacts, integers
from handserve.configs import Settings, setting
from handserve.images import DEFAULT_MAX_PIXELS

#: The ``runtime`` setting: "auto" or a runtime name, a key of handserve.artifacts.DEFAULT_FORMAT
#: (a Literal, so pydantic and mypy check it; tests/unit/test_model_folder.py: the lists agree).
RuntimeChoice = Literal["auto", "litert", "savedmodel"]
ENV_PREFIX = "HANDSERVE_"
CONFIG_ENV = "HANDSERVE_CONFIG"


class ServiceConfig(Settings):
    """One serving process (all its workers share it)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX)
    ENV_PREFIX: ClassVar[str | None] = ENV_PREFIX

    # --- models
    # Relative to the working directory, like `handserve train --export` writes it.
    models_dir: str = setting("models", "folder of models/NAME/VERSION exports")
    # Pin versions as {"digits": 3}; unpinned names serve their highest (newest) version.
    # In the environment: HANDSERVE_VERSIONS="digits=3,signs=1" (NoDecode: not JSON).
    versions: Annotated[dict[str, Annotated[StrictInt, Field(gt=0)]], NoDecode] = setting(
        help="pinned versions, NAME=VERSION (default: latest)", default_factory=dict
    )
    # None: the only model, else the first by name. Requests may always name a model.
    default_model: str | None = setting(None, "model used when a request names none")
    # auto: SavedModel on a visible GPU (TensorFlow uses it), else LiteRT (3-20x faster on CPU).
    runtime: RuntimeChoice = setting("auto", "which runtime runs the models (auto: by hardware)")
    # float32 is the exact export; int8 measured slower on these CPUs (docs/service.md).
    litert_file: str = setting(
        artifacts.TFLITE_FP32.path, "which .tflite of the version folder LiteRT runs"
    )
    # LiteRT runs requests side by side in worker processes (one per core, see `workers`),
    # each single-threaded. A second interpreter per worker lets one long /predict_batch
    # request use two cores (16 MobileNetV2 images: 118 -> 225 images/s on 2 cores).
    interpreters: int = setting(2, "LiteRT interpreters per model in each worker", ge=1)
    num_threads: int = setting(1, "threads per LiteRT interpreter (XNNPACK)", ge=1)
    # Single images waiting in one worker at the same moment (requests queued behind a model
    # call) go through one call, where the model's warm-up shows a batch of 4 costs at least
    # 10% less per image (MobileNetV2 at 160 px about 0.7x, the digits CNN about 0.85x).
    # docs/benchmarks/peers.md has the measurements.
    join_requests: bool = setting(
        True, "join waiting single-image requests into one LiteRT call where it pays"
    )
    # One client at a time leaves the other cores idle: a single image then runs on an
    # interpreter with a thread per core (MobileNetV2 at 160 px: 1.23 -> 0.93 ms a call), the
    # moment every other worker idles (their load, published for the balancing, says so).
    spare_cores: bool = setting(
        True, "a single image runs with a thread per core while the other workers idle"
    )
    # A few batches compile kernels and fill caches before /readyz turns 200.
    warmup_batches: int = setting(3, "dummy batches run per model before ready", ge=0)
    # Testing knob: proves /readyz waits for warm-up. Leave at 0 in production.
    warmup_delay_s: float = setting(0.0, "extra sleep after warm-up before ready (tests)", ge=0)
    # Models on a volume (k8s overlay "models-volume"): a finished export that appears there is
    # loaded, verified, warmed and switched to without a restart. 0 keeps the set of models
    # fixed for the life of the process (baked into the image: nothing can appear).
    reload_interval_s: float = setting(
        0.0, "seconds between scans of models_dir for new versions (0: off)", ge=0
    )

    # --- batching (BentoML adaptive batching; SavedModel runtime only, LiteRT does not gain)
    # Large enough to amortise per-call cost (TensorFlow's throughput grows to batch 32-128).
    max_batch_size: int = setting(64, "largest batch BentoML's dispatcher forms, in images", ge=1)
    # BentoML cancels (503 "overloaded") a request it predicts will exceed this; our own
    # admission control refuses earlier, so this is a last-resort deadline, not a target.
    max_latency_ms: int = setting(5000, "BentoML's batching deadline per request", ge=1)

    # --- process
    # 0: one per usable CPU with LiteRT (requests run side by side, each process has its own
    # GIL); one with SavedModel, whose batches use every core (or the GPU) from one process.
    workers: int = setting(0, "BentoML worker processes (0: by runtime, see docs/service.md)", ge=0)
    # BentoML's threads for sync API methods; every route here is async (models run in
    # anyio's worker threads, bounded by the interpreter pool), so this matters little.
    threads: int = setting(2, "BentoML threads per worker", ge=1)
    timeout_s: float = setting(30.0, "request timeout: 504, work stops (service.deadline)", gt=0)
    # Images admitted and not yet answered, per worker; beyond it requests get 503 +
    # Retry-After instead of queueing without bound. 2048 is 32 full /predict_batch requests,
    # about 1-2 s of work for a small model on 2 cores: queueing longer helps nobody.
    max_inflight_images: int = setting(2048, "admission cap per worker (bounded queue)", ge=1)
    retry_after_s: int = setting(1, "Retry-After seconds sent with 503 refusals", ge=0)
    # The workers share one listening socket, and keep-alive connections can pile up on one of
    # them while another idles (service.balance has the why and the measurements): a busy
    # worker answers some of its connections with `Connection: close` so they reconnect to
    # the idle one. A balanced server closes nothing; off is there to measure what it does.
    rebalance: bool = setting(
        True, "close keep-alive connections of a busy worker while a peer worker idles"
    )
    # Per-request access logs cost measurable CPU at hundreds of requests/s on 2 cores.
    access_log: bool = setting(False, "BentoML access log per request")

    # --- Open Inference Protocol over gRPC (service.v2_grpc), beside the HTTP port
    # Off by default: a port nobody asked for is a port to secure. Every worker listens on it.
    grpc_port: int = setting(
        0, "gRPC port for the Open Inference Protocol (0: off)", ge=0, le=65535
    )
    # handserve serve sets it to its --host, so both ports listen on the same address.
    grpc_host: str = setting("0.0.0.0", "address the gRPC port listens on")

    # --- inputs
    max_body_bytes: int = setting(
        10 * 1024 * 1024, "largest request body, bytes (413 beyond)", ge=1
    )
    # A client that stalls mid-body would otherwise hold a slot until timeout_s. A photo of a
    # few hundred kB arrives in well under a second; raise this for large bodies on slow links.
    body_timeout_s: float = setting(5.0, "seconds to receive the whole body (408 beyond)", gt=0)
    # The same for the headers (service.connections): from connecting, or from a kept-alive
    # request's first byte, to the end of its headers. A few hundred bytes arrive in well under
    # a second on any link; a client still sending after 10 s holds a descriptor for nothing.
    header_timeout_s: float = setting(
        10.0, "seconds to receive a request's headers (408 and closed beyond)", gt=0
    )
    # Idle time between two requests of a connection: uvicorn's and BentoML's default, 5 s.
    # Behind a load balancer that reuses connections, set it above the balancer's own idle
    # timeout (60 s on AWS ALB), or the balancer may send a request on a connection being closed.
    keep_alive_timeout_s: float = setting(
        5.0, "seconds an idle keep-alive connection stays open", gt=0
    )
    max_pixels: int = setting(DEFAULT_MAX_PIXELS, "largest decoded image, w*h", ge=1)
    # A small body can declare a lot of pixels (64 photos of 40 MP fit in 3 MB and cost minutes
    # of decoding). Counted as decoded (a JPEG at its reduced DCT scale), before decoding: 200 MP
    # decodes in under 5 s on one core in the slowest format here (WebP, about 22 ms/MP; JPEG
    # 0.8 ms/MP, PNG 7-14 ms/MP), well inside timeout_s. 413 too_many_request_pixels beyond.
    max_request_pixels: int = setting(
        200_000_000, "most pixels one request may decode (sum over its images)", ge=1
    )
    # Admission counts these too, beside max_inflight_images: four of the largest requests.
    max_inflight_pixels: int = setting(
        800_000_000, "admission cap per worker in decoded pixels (503 beyond)", ge=1
    )
    max_batch_images: int = setting(64, "most images in one /predict_batch", ge=1)
    top_k: int = setting(5, "predictions returned when the request gives no top_k", ge=1)

    @field_validator("versions", mode="before")
    @classmethod
    def _versions_from_text(cls, value: Any) -> Any:
        """``"a=2, b=3"`` (a variable or a flag) -> ``{"a": 2, "b": 3}``; mappings pass."""
        if not isinstance(value, str):
            return value
        out: dict[str, int] = {}
        for part in filter(None, (p.strip() for p in value.split(","))):
            name, sep, number = part.partition("=")
            version = integers.ascii_int(number.strip())
            if not sep or not name.strip() or version is None:
                raise ValueError(f"{part!r} is not NAME=VERSION (like digits=3,signs=1)")
            out[name.strip()] = version
        return out

    @field_validator("litert_file")
    @classmethod
    def _is_tflite(cls, value: str) -> str:
        if not value.endswith(".tflite"):
            raise ValueError("must name a .tflite file")
        return value

    @field_validator("default_model", mode="before")
    @classmethod
    def _none_from_text(cls, value: Any) -> Any:
        """An empty, ``none`` or ``null`` variable means "no default model"."""
        if isinstance(value, str) and value.strip().lower() in ("", "none", "null"):
            return None
        return value

    @model_validator(mode="after")
    def _fits_together(self) -> ServiceConfig:
        if self.max_inflight_images < self.max_batch_images:
            raise ValueError(
                "max_inflight_images must be >= max_batch_images (a full batch must fit)"
            )
        if self.max_inflight_pixels < self.max_request_pixels:
            raise ValueError(
                "max_inflight_pixels must be >= max_request_pixels (the largest request must fit)"
            )
        return self


def load_service_config(
    path: str | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> ServiceConfig:
    """Defaults < file (``path`` or ``$HANDSERVE_CONFIG``) < ``HANDSERVE_*`` variables < flags.

    Raises:
        handserve.configs.ConfigError: unknown key, wrong type or bad value, naming its source.
    """
    env = os.environ if environ is None else environ
    return ServiceConfig.load(path or env.get(CONFIG_ENV) or None, flags=flags, environ=env)


def to_env(cfg_values: Mapping[str, Any]) -> dict[str, str]:
    """Settings as ``HANDSERVE_*`` variables: how ``handserve serve`` hands its flags to the
    worker processes (which read them back through :func:`load_service_config`)."""
    out = {}
    for name, value in cfg_values.items():
        if value is None:
            continue
        if name == "versions" and isinstance(value, str):  # "a=1,b=2" from a flag
            text = value
        elif name == "versions":
            text = ",".join(f"{k}={v}" for k, v in dict(value).items())
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        out[ENV_PREFIX + name.upper()] = text
    return out
