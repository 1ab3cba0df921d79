"""``ServiceConfig``: every serving knob, with the reason for its default.

Loaded by :func:`load_service_config` from an optional YAML/TOML/JSON file
(``$HANDSERVE_CONFIG``) and then ``HANDSERVE_<FIELD>`` environment variables, because
``bentoml serve`` starts worker processes that can only be configured through the environment.
``handserve serve`` turns its flags into those variables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_type_hints

from handserve import configs
from handserve.images import DEFAULT_MAX_PIXELS

Runtime = Literal["auto", "litert", "savedmodel"]
ENV_PREFIX = "HANDSERVE_"
CONFIG_ENV = "HANDSERVE_CONFIG"


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ServiceConfig:
    """One serving process (all its workers share it)."""

    # --- models
    # Relative to the working directory, like `handserve train --export` writes it.
    models_dir: str = _f("models", "folder of models/NAME/VERSION exports")
    # Pin versions as {"digits": 3}; unpinned names serve their highest (newest) version.
    versions: dict[str, int] = field(
        default_factory=dict, metadata={"help": "pinned versions, NAME=VERSION (default: latest)"}
    )
    # None: the only model, else the first by name. Requests may always name a model.
    default_model: str | None = _f(None, "model used when a request names none")
    # auto: SavedModel on a visible GPU (TensorFlow uses it), else LiteRT (3-20x faster on CPU).
    runtime: Runtime = _f("auto", "auto, litert or savedmodel")
    # float32 is the exact export; int8 measured slower on these CPUs (docs/service.md).
    litert_file: str = _f("model.tflite", "which .tflite of the version folder LiteRT runs")
    # LiteRT runs requests side by side in worker processes (one per core, see `workers`),
    # each single-threaded. A second interpreter per worker lets one long /predict_batch
    # request use two cores (16 MobileNetV2 images: 118 -> 225 images/s on 2 cores).
    interpreters: int = _f(2, "LiteRT interpreters per model in each worker")
    num_threads: int = _f(1, "threads per LiteRT interpreter (XNNPACK)")
    # A few batches compile kernels and fill caches before /readyz turns 200.
    warmup_batches: int = _f(3, "dummy batches run per model before ready")
    # Testing knob: proves /readyz waits for warm-up. Leave at 0 in production.
    warmup_delay_s: float = _f(0.0, "extra sleep after warm-up before ready (tests)")

    # --- batching (BentoML adaptive batching; SavedModel runtime only, LiteRT does not gain)
    # Large enough to amortise per-call cost (TensorFlow's throughput grows to batch 32-128).
    max_batch_size: int = _f(64, "largest batch BentoML's dispatcher forms, in images")
    # BentoML cancels (503 "overloaded") a request it predicts will exceed this; our own
    # admission control refuses earlier, so this is a last-resort deadline, not a target.
    max_latency_ms: int = _f(5000, "BentoML's batching deadline per request")

    # --- process
    # 0: one per usable CPU with LiteRT (requests run side by side, each process has its own
    # GIL); one with SavedModel, whose batches use every core (or the GPU) from one process.
    workers: int = _f(0, "BentoML worker processes (0: by runtime, see docs/service.md)")
    # BentoML's threads for sync API methods; every route here is async (models run in
    # anyio's worker threads, bounded by the interpreter pool), so this matters little.
    threads: int = _f(2, "BentoML threads per worker")
    timeout_s: float = _f(30.0, "request timeout (BentoML traffic.timeout)")
    # Images admitted and not yet answered, per worker; beyond it requests get 503 +
    # Retry-After instead of queueing without bound. 2048 is 32 full /predict_batch requests,
    # about 1-2 s of work for a small model on 2 cores: queueing longer helps nobody.
    max_inflight_images: int = _f(2048, "admission cap per worker (bounded queue)")
    retry_after_s: int = _f(1, "Retry-After seconds sent with 503 refusals")
    # Per-request access logs cost measurable CPU at hundreds of requests/s on 2 cores.
    access_log: bool = _f(False, "BentoML access log per request")

    # --- inputs
    max_body_bytes: int = _f(10 * 1024 * 1024, "largest request body, bytes (413 beyond)")
    # A client that stalls mid-body would otherwise hold a slot until timeout_s. A photo of a
    # few hundred kB arrives in well under a second; raise this for large bodies on slow links.
    body_timeout_s: float = _f(5.0, "seconds to receive the whole body (408 beyond)")
    max_pixels: int = _f(DEFAULT_MAX_PIXELS, "largest decoded image, width*height")
    max_batch_images: int = _f(64, "most images in one /predict_batch request")
    top_k: int = _f(5, "predictions returned when the request gives no top_k")

    def __post_init__(self) -> None:
        checks = [
            (self.num_threads >= 1, "num_threads must be at least 1"),
            (self.interpreters >= 1, "interpreters must be at least 1"),
            (self.body_timeout_s > 0, "body_timeout_s must be positive"),
            (self.warmup_batches >= 0, "warmup_batches must be >= 0"),
            (self.warmup_delay_s >= 0, "warmup_delay_s must be >= 0"),
            (self.max_batch_size >= 1, "max_batch_size must be at least 1"),
            (self.max_latency_ms >= 1, "max_latency_ms must be at least 1"),
            (self.workers >= 0, "workers must be >= 0 (0: by runtime)"),
            (self.threads >= 1, "threads must be at least 1"),
            (self.timeout_s > 0, "timeout_s must be positive"),
            (self.max_inflight_images >= 1, "max_inflight_images must be at least 1"),
            (self.retry_after_s >= 0, "retry_after_s must be >= 0"),
            (self.max_body_bytes >= 1, "max_body_bytes must be at least 1"),
            (self.max_pixels >= 1, "max_pixels must be at least 1"),
            (self.max_batch_images >= 1, "max_batch_images must be at least 1"),
            (self.top_k >= 1, "top_k must be at least 1"),
            (
                self.max_inflight_images >= self.max_batch_images,
                "max_inflight_images must be >= max_batch_images (a full batch must fit)",
            ),
            (self.litert_file.endswith(".tflite"), "litert_file must name a .tflite file"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        for name, version in self.versions.items():
            if not isinstance(version, int) or isinstance(version, bool) or version <= 0:
                raise ValueError(f"versions[{name!r}] must be a positive integer")


def _parse_env_value(name: str, raw: str, hint: Any) -> Any:
    """Environment variables are strings: turn one into the field's type (errors name it)."""
    text = hint if isinstance(hint, str) else repr(hint)
    try:
        if name == "versions":
            out: dict[str, int] = {}
            for part in filter(None, (p.strip() for p in raw.split(","))):
                key, _, value = part.partition("=")
                out[key.strip()] = int(value)
            return out
        if "bool" in text and "int" not in text:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if "None" in text and raw.strip().lower() in ("", "none", "null"):
            return None
        if "float" in text:
            return float(raw)
        if "int" in text:
            return int(raw)
    except ValueError as exc:
        raise configs.ConfigError(f"${ENV_PREFIX}{name.upper()}: cannot parse {raw!r}") from exc
    return raw


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``HANDSERVE_<FIELD>`` variables as typed overrides; other HANDSERVE_ names are ignored."""
    environ = os.environ if environ is None else environ
    hints = get_type_hints(ServiceConfig)
    out: dict[str, Any] = {}
    for f in fields(ServiceConfig):
        key = ENV_PREFIX + f.name.upper()
        if key in environ:
            out[f.name] = _parse_env_value(f.name, environ[key], hints[f.name])
    return out


def load_service_config(
    path: str | None = None, environ: Mapping[str, str] | None = None
) -> ServiceConfig:
    """Defaults < file (``path`` or ``$HANDSERVE_CONFIG``) < ``HANDSERVE_*`` variables.

    Raises:
        handserve.configs.ConfigError: unknown key, wrong type or bad value, naming its source.
    """
    environ = os.environ if environ is None else environ
    path = path or environ.get(CONFIG_ENV) or None
    return configs.load(ServiceConfig, path, env_overrides(environ))


def to_env(cfg_values: Mapping[str, Any]) -> dict[str, str]:
    """The inverse of :func:`env_overrides`: what ``handserve serve`` exports to workers."""
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
