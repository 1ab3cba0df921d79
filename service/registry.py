"""The models a worker serves: load, verify, warm up, resolve requests, run batches.

Every model name in the models folder is loaded at its latest version (or the pinned one),
after :func:`handserve.artifacts.load_verified` has checked every checksum and the runtime's
input shape has been checked against the manifest. A model that fails is *refused*: logged with
the reason, listed in ``/models``, and not served, while the others serve normally.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from handserve import artifacts
from handserve.artifacts import ArtifactError, Manifest
from service.config import ServiceConfig
from service.errors import ApiError
from service.runtimes import Runtime, build_runtime, choose_runtime_name

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    name: str
    version: int
    manifest: Manifest
    runtime: Runtime
    version_dir: Path
    sha256: str  # of the file the runtime runs (tflite) or the saved_model.pb

    @property
    def version_label(self) -> str:
        return str(self.version)


@dataclass(frozen=True)
class RefusedModel:
    name: str
    version: int | None
    reason: str


@dataclass
class Pending:
    """One image waiting for its batch: what the batch function needs and fills in."""

    model: LoadedModel
    image: np.ndarray  # uint8 (H, W, C)
    enqueued: float = field(default_factory=time.perf_counter)
    scores: np.ndarray | None = None
    warmup: bool = False  # warm-up items are kept out of the metrics


def top_k(scores: np.ndarray, labels: list[str], k: int) -> list[dict[str, Any]]:
    """The ``k`` best classes, highest score first; ties keep index order (stable sort)."""
    k = max(1, min(int(k), len(labels)))
    order = np.argsort(-scores, kind="stable")[:k]
    return [{"label": labels[i], "index": int(i), "score": float(scores[i])} for i in order]


class ModelRegistry:
    """All models of one worker; ``ready`` turns true once every model is loaded and warm."""

    def __init__(self, cfg: ServiceConfig, metrics: Any = None) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.models: dict[str, LoadedModel] = {}
        self.refused: list[RefusedModel] = []
        self.runtime_name: str | None = None
        self._ready = threading.Event()
        self.load_error: str | None = None

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def mark_ready(self) -> None:
        self._ready.set()

    # ------------------------------------------------------------------ loading
    def load_all(self) -> None:
        """Load every model; never raises for one bad model (it is refused instead)."""
        root = Path(self.cfg.models_dir)
        available = artifacts.list_models(root)
        if not available:
            log.warning("no models found in %s", root.resolve())
        for name in self.cfg.versions:
            if name not in available:
                self._refuse(name, self.cfg.versions[name], f"pinned, but {root / name} is absent")
        self.runtime_name = choose_runtime_name(self.cfg.runtime)
        log.info("runtime: %s (requested %s)", self.runtime_name, self.cfg.runtime)
        for name in available:
            version = self.cfg.versions.get(name) or available[name][-1]
            try:
                self.models[name] = self._load_one(root, name, version)
            except (ArtifactError, ValueError, OSError, RuntimeError, ImportError) as exc:
                self._refuse(name, version, str(exc))
        for model in self.models.values():
            if self.metrics is not None:
                self.metrics.model_info.labels(
                    name=model.name,
                    version=model.version_label,
                    runtime=model.runtime.name,
                    sha256=model.sha256,
                ).set(1)
        log.info("serving %s; refused %s", sorted(self.models), [r.name for r in self.refused])
        default = self.cfg.default_model
        if default and default not in self.models:
            log.error(
                "default_model %r is not served (served: %s): requests without model= get 404",
                default,
                ", ".join(sorted(self.models)) or "none",
            )

    def _refuse(self, name: str, version: int | None, reason: str) -> None:
        log.error("refusing model %s/%s: %s", name, version, reason)
        self.refused.append(RefusedModel(name, version, reason))

    def _load_one(self, root: Path, name: str, version: int) -> LoadedModel:
        vdir = artifacts.version_dir(root, name, version)
        manifest = artifacts.load_verified(vdir)
        assert self.runtime_name is not None
        runtime = build_runtime(
            vdir,
            manifest,
            runtime=self.runtime_name,
            litert_file=self.cfg.litert_file,
            num_threads=self.cfg.num_threads,
            max_batch=self.cfg.max_batch_size,
        )
        file = runtime.file if runtime.name == "litert" else "saved_model/saved_model.pb"
        sha = next((e.sha256 for e in manifest.files if e.path == file), "")
        model = LoadedModel(name, version, manifest, runtime, vdir, sha)
        self.warm_up(model)
        log.info("loaded %s/%s (%s, %s)", name, version, runtime.name, runtime.file)
        return model

    def warm_up(self, model: LoadedModel) -> None:
        """Run dummy batches at a few sizes so the first requests do not pay for setup."""
        shape = model.manifest.input.shape
        sizes = sorted({1, min(8, self.cfg.max_batch_size), self.cfg.max_batch_size})
        for _ in range(self.cfg.warmup_batches):
            for n in sizes:
                out = model.runtime.predict(np.zeros((n, *shape), np.uint8))
                if out.shape != (n, model.manifest.num_classes):
                    raise ArtifactError(
                        model.version_dir,
                        f"model outputs shape {out.shape}, expected "
                        f"({n}, {model.manifest.num_classes}) for {model.manifest.num_classes} "
                        "labels",
                    )

    # ------------------------------------------------------------------ requests
    def default_name(self) -> str | None:
        if self.cfg.default_model:
            return self.cfg.default_model
        return next(iter(sorted(self.models)), None)

    def resolve(self, name: str | None, version: int | None) -> LoadedModel:
        """The model a request asks for; ApiError 404 when it is not served."""
        name = name or self.default_name()
        if name is None:
            raise ApiError("unknown_model", "no model is being served")
        model = self.models.get(name)
        if model is None:
            refused = next((r for r in self.refused if r.name == name), None)
            why = f" (refused at start: {refused.reason})" if refused else ""
            served = ", ".join(sorted(self.models)) or "none"
            raise ApiError("unknown_model", f"model {name!r} is not served{why}; served: {served}")
        if version is not None and version != model.version:
            raise ApiError(
                "unknown_version",
                f"model {name!r} version {version} is not served; served version: {model.version}",
            )
        return model

    def run_batch(self, items: list[Pending]) -> None:
        """Run one dispatcher batch: group by model, one runtime call per group, fill scores."""
        start = time.perf_counter()
        groups: dict[tuple[str, int], list[Pending]] = {}
        for item in items:
            groups.setdefault((item.model.name, item.model.version), []).append(item)
        for group in groups.values():
            model = group[0].model
            t0 = time.perf_counter()
            scores = model.runtime.predict(np.stack([p.image for p in group]))
            elapsed = time.perf_counter() - t0
            for item, row in zip(group, scores, strict=True):
                item.scores = row
            real = [p for p in group if not p.warmup]
            if self.metrics is None or not real:
                continue
            m = self.metrics
            m.inference_seconds.labels(
                model=model.name, version=model.version_label, runtime=model.runtime.name
            ).observe(elapsed)
            m.batch_size.labels(model=model.name).observe(len(real))
            for item in real:
                m.batch_wait_seconds.observe(max(0.0, start - item.enqueued))
                assert item.scores is not None
                label = model.manifest.labels[int(np.argmax(item.scores))]
                m.predictions.labels(
                    model=model.name, version=model.version_label, label=label
                ).inc()

    def describe(self) -> dict[str, Any]:
        """``GET /models``: what is served, with its contract and metrics, and what was refused."""
        root = Path(self.cfg.models_dir)
        out = []
        for name in sorted(self.models):
            m = self.models[name]
            man = m.manifest
            out.append(
                {
                    "name": name,
                    "version": m.version,
                    "versions": artifacts.list_versions(root, name),
                    "default": name == self.default_name(),
                    "labels": man.labels,
                    "input": {
                        "height": man.input.height,
                        "width": man.input.width,
                        "channels": man.input.channels,
                        "color_mode": man.input.color_mode,
                        "dtype": man.input.dtype,
                        "value_range": list(man.input.value_range),
                    },
                    "runtime": m.runtime.name,
                    "file": m.runtime.file,
                    "sha256": m.sha256,
                    "created_at": man.created_at,
                    "backbone": man.backbone,
                    "metrics": man.metrics,
                    "formats": {
                        k: {"path": f.path, "precision": f.precision, "metrics": f.metrics}
                        for k, f in man.formats.items()
                    },
                }
            )
        return {
            "ready": self.ready,
            "default_model": self.default_name(),
            "models": out,
            "refused": [
                {"name": r.name, "version": r.version, "reason": r.reason} for r in self.refused
            ],
        }
