"""``ServiceConfig``: every serving knob, with the reason for its default.

A pydantic-settings class: defaults < an optional YAML/TOML/JSON file (``$HANDSERVE_CONFIG``)
< ``HANDSERVE_<FIELD>`` environment variables, because ``bentoml serve`` starts worker processes
that can only be configured through the environment. ``handserve serve`` turns its flags into
those variables. Every refusal is a :class:`handserve.configs.ConfigError` naming where the bad
value came from (the variable, or the file and key) and what is wrong with it.
"""

from __future__ import annotations

import argparse
import contextvars
import os
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, StrictInt, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from handserve import artifacts, configs
from handserve.images import DEFAULT_MAX_PIXELS

#: "auto" or a runtime of handserve.artifacts.RUNTIMES (a Literal, so pydantic and mypy check
#: it; tests/unit/test_model_folder.py checks that the two lists agree).
Runtime = Literal["auto", "litert", "savedmodel"]
ENV_PREFIX = "HANDSERVE_"
CONFIG_ENV = "HANDSERVE_CONFIG"

#: (environment, file values) that :func:`load_service_config` hands to the settings sources.
_SOURCES: contextvars.ContextVar[tuple[Mapping[str, str] | None, dict[str, Any]]] = (
    contextvars.ContextVar("handserve_service_config_sources", default=(None, {}))
)


class ServiceConfig(BaseSettings):
    """One serving process (all its workers share it)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    # --- models
    # Relative to the working directory, like `handserve train --export` writes it.
    models_dir: str = Field(default="models", description="folder of models/NAME/VERSION exports")
    # Pin versions as {"digits": 3}; unpinned names serve their highest (newest) version.
    # In the environment: HANDSERVE_VERSIONS="digits=3,signs=1" (NoDecode: not JSON).
    versions: Annotated[dict[str, Annotated[StrictInt, Field(gt=0)]], NoDecode] = Field(
        default_factory=dict, description="pinned versions, NAME=VERSION (default: latest)"
    )
    # None: the only model, else the first by name. Requests may always name a model.
    default_model: str | None = Field(
        default=None, description="model used when a request names none"
    )
    # auto: SavedModel on a visible GPU (TensorFlow uses it), else LiteRT (3-20x faster on CPU).
    runtime: Runtime = Field(default="auto", description="auto, litert or savedmodel")
    # float32 is the exact export; int8 measured slower on these CPUs (docs/service.md).
    litert_file: str = Field(
        default=artifacts.TFLITE_FP32.path,
        description="which .tflite of the version folder LiteRT runs",
    )
    # LiteRT runs requests side by side in worker processes (one per core, see `workers`),
    # each single-threaded. A second interpreter per worker lets one long /predict_batch
    # request use two cores (16 MobileNetV2 images: 118 -> 225 images/s on 2 cores).
    interpreters: int = Field(
        default=2, ge=1, description="LiteRT interpreters per model in each worker"
    )
    num_threads: int = Field(
        default=1, ge=1, description="threads per LiteRT interpreter (XNNPACK)"
    )
    # A few batches compile kernels and fill caches before /readyz turns 200.
    warmup_batches: int = Field(
        default=3, ge=0, description="dummy batches run per model before ready"
    )
    # Testing knob: proves /readyz waits for warm-up. Leave at 0 in production.
    warmup_delay_s: float = Field(
        default=0.0, ge=0, description="extra sleep after warm-up before ready (tests)"
    )
    # Models on a volume (k8s overlay "models-volume"): a finished export that appears there is
    # loaded, verified, warmed and switched to without a restart. 0 keeps the set of models
    # fixed for the life of the process (baked into the image: nothing can appear).
    reload_interval_s: float = Field(
        default=0.0,
        ge=0,
        description="seconds between scans of models_dir for new versions (0: off)",
    )

    # --- batching (BentoML adaptive batching; SavedModel runtime only, LiteRT does not gain)
    # Large enough to amortise per-call cost (TensorFlow's throughput grows to batch 32-128).
    max_batch_size: int = Field(
        default=64, ge=1, description="largest batch BentoML's dispatcher forms, in images"
    )
    # BentoML cancels (503 "overloaded") a request it predicts will exceed this; our own
    # admission control refuses earlier, so this is a last-resort deadline, not a target.
    max_latency_ms: int = Field(
        default=5000, ge=1, description="BentoML's batching deadline per request"
    )

    # --- process
    # 0: one per usable CPU with LiteRT (requests run side by side, each process has its own
    # GIL); one with SavedModel, whose batches use every core (or the GPU) from one process.
    workers: int = Field(
        default=0, ge=0, description="BentoML worker processes (0: by runtime, see docs/service.md)"
    )
    # BentoML's threads for sync API methods; every route here is async (models run in
    # anyio's worker threads, bounded by the interpreter pool), so this matters little.
    threads: int = Field(default=2, ge=1, description="BentoML threads per worker")
    timeout_s: float = Field(
        default=30.0, gt=0, description="request timeout (BentoML traffic.timeout)"
    )
    # Images admitted and not yet answered, per worker; beyond it requests get 503 +
    # Retry-After instead of queueing without bound. 2048 is 32 full /predict_batch requests,
    # about 1-2 s of work for a small model on 2 cores: queueing longer helps nobody.
    max_inflight_images: int = Field(
        default=2048, ge=1, description="admission cap per worker (bounded queue)"
    )
    retry_after_s: int = Field(
        default=1, ge=0, description="Retry-After seconds sent with 503 refusals"
    )
    # Per-request access logs cost measurable CPU at hundreds of requests/s on 2 cores.
    access_log: bool = Field(default=False, description="BentoML access log per request")

    # --- inputs
    max_body_bytes: int = Field(
        default=10 * 1024 * 1024, ge=1, description="largest request body, bytes (413 beyond)"
    )
    # A client that stalls mid-body would otherwise hold a slot until timeout_s. A photo of a
    # few hundred kB arrives in well under a second; raise this for large bodies on slow links.
    body_timeout_s: float = Field(
        default=5.0, gt=0, description="seconds to receive the whole body (408 beyond)"
    )
    max_pixels: int = Field(
        default=DEFAULT_MAX_PIXELS, ge=1, description="largest decoded image, w*h"
    )
    max_batch_images: int = Field(default=64, ge=1, description="most images in one /predict_batch")
    top_k: int = Field(
        default=5, ge=1, description="predictions returned when the request gives no top_k"
    )

    @field_validator("versions", mode="before")
    @classmethod
    def _versions_from_text(cls, value: Any) -> Any:
        """``"a=2, b=3"`` (a variable or a flag) -> ``{"a": 2, "b": 3}``; mappings pass."""
        if not isinstance(value, str):
            return value
        out: dict[str, int] = {}
        for part in filter(None, (p.strip() for p in value.split(","))):
            name, sep, number = part.partition("=")
            if not sep or not name.strip() or not number.strip().isdigit():
                raise ValueError(f"{part!r} is not NAME=VERSION (like digits=3,signs=1)")
            out[name.strip()] = int(number)
        return out

    @field_validator("litert_file")
    @classmethod
    def _is_tflite(cls, value: str) -> str:
        if not value.endswith(".tflite"):
            raise ValueError("litert_file must name a .tflite file")
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
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments < environment < file < defaults, highest first (no .env, no secrets)."""
        environ, file_values = _SOURCES.get()
        env = env_settings if environ is None else _MappingEnvSource(settings_cls, environ)
        return init_settings, env, InitSettingsSource(settings_cls, init_kwargs=file_values)


class _MappingEnvSource(EnvSettingsSource):
    """The environment source reading a given mapping (``handserve serve`` checks the
    environment it is about to hand to ``bentoml serve``, not its own)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {k.lower(): v for k, v in self._environ.items()}


def load_service_config(
    path: str | None = None, environ: Mapping[str, str] | None = None
) -> ServiceConfig:
    """Defaults < file (``path`` or ``$HANDSERVE_CONFIG``) < ``HANDSERVE_*`` variables.

    Raises:
        handserve.configs.ConfigError: unknown key, wrong type or bad value, naming its source.
    """
    env = os.environ if environ is None else environ
    path = path or env.get(CONFIG_ENV) or None
    return _build(env, path, configs.read_config_file(path) if path else {})


def _build(environ: Mapping[str, str], path: str | None, file_values: dict) -> ServiceConfig:
    token = _SOURCES.set((environ, file_values))
    try:
        return ServiceConfig()
    except ValidationError as exc:
        raise configs.ConfigError(_explain(exc, environ, path, file_values)) from None
    finally:
        _SOURCES.reset(token)


def _explain(
    exc: ValidationError, environ: Mapping[str, str], path: str | None, file_values: dict
) -> str:
    """One line per problem, each naming the variable or the file key that caused it."""
    lowered = {k.upper(): v for k, v in environ.items()}
    known = ", ".join(ServiceConfig.model_fields)
    lines, unknown = [], []
    for err in exc.errors(include_url=False):
        field = str(err["loc"][0]) if err["loc"] else ""
        where = ".".join(str(p) for p in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        var = ENV_PREFIX + field.upper()
        if err["type"] == "extra_forbidden":
            unknown.append(field)
        elif field and var in lowered:
            lines.append(f"${var}: cannot use {lowered[var]!r}: {where}: {message}")
        elif field in file_values:
            lines.append(f"{path}: {field!r}: {message} (got {file_values[field]!r})")
        else:  # a check across fields: name every value that was given
            names = [ENV_PREFIX + n.upper() for n in ServiceConfig.model_fields]
            given = [f"${v}={lowered[v]!r}" for v in names if v in lowered]
            given += [f"{path}: {k}" for k in file_values]
            lines.append(f"{where or 'config'}: {message} (given: {', '.join(given) or 'none'})")
    if unknown:
        lines.insert(0, f"{path}: unknown key(s) {', '.join(unknown)}; known keys: {known}")
    return "; ".join(lines)


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``HANDSERVE_<FIELD>`` variables as typed overrides; other HANDSERVE_ names are ignored."""
    environ = os.environ if environ is None else environ
    given = {k.upper() for k in environ}
    cfg = _build(environ, None, {})
    return cfg.model_dump(include={n for n in cfg.model_fields if ENV_PREFIX + n.upper() in given})


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per field, defaulting to None so that unset flags override nothing."""
    for name, info in ServiceConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        default = info.get_default(call_default_factory=True)
        kw: dict[str, Any] = {
            "dest": name,
            "default": None,
            "help": f"{info.description} (default: {default!r})",
        }
        hint = info.annotation
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        if hint is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(hint) is Literal:
            kw["choices"] = typing.get_args(hint)
        elif hint in (int, float):
            kw["type"] = hint
        parser.add_argument(flag, **kw)  # versions stays text: "a=1,b=2"


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The flags that were given, by field name."""
    return {
        k: v for k, v in vars(args).items() if k in ServiceConfig.model_fields and v is not None
    }
