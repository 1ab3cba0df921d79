"""The models a worker serves: load, verify, warm up, resolve requests, describe them.

Every model name in the models folder is loaded at its latest version (or the pinned one),
after :func:`handserve.artifacts.load_verified` has checked every checksum and the runtime's
input shape has been checked against the manifest. A model that fails is *refused*: logged with
the reason, listed in ``/models``, and not served, while the others serve normally.

Checksums are checked for every file of the version that is present, and the files the chosen
runtime reads must be present: a LiteRT Bento carries only ``manifest.json`` and its ``.tflite``
(see ``bentofile.yaml``), a SavedModel one the ``saved_model/`` folder. With
``reload_interval_s`` (:mod:`service.reload`) a newer version that appears later is loaded the
same way and switched to with :meth:`ModelRegistry.switch`.

Nothing a version serves is read from its folder once it is loaded (the runtimes hold the model
in memory), so a folder deleted under a running server never turns into an error. With reload
on, :meth:`ModelRegistry.removed` finds served versions whose files are gone and the watcher
falls back to the newest remaining version or unloads the model (docs/service.md, "Versions
removed from disk"); with reload off the server keeps serving, and ``/models`` says
``"on_disk": false``.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from handserve import artifacts, hands
from handserve.artifacts import ArtifactError, Manifest
from handserve.hand_pipeline import LANDMARK_TENSORS, HandPipeline
from handserve.images import ImageSpec
from handserve.runtimes import (
    LiteRTRuntime,
    Runtime,
    available_cpus,
    choose_runtime_name,
    open_runtime,
)
from service.config import ServiceConfig
from service.errors import ApiError

#: Waiting requests are joined into one model call where a batch of 4 costs under this much per
#: image of a single image's time (service.inference.ParallelEngine).
JOIN_BELOW = 0.9
#: The most images one joined call takes: the call runs on the event loop.
MAX_JOINED = 8

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    name: str
    version: int
    manifest: Manifest
    runtime: Runtime
    version_dir: Path
    sha256: str  # of the file the runtime runs (tflite) or the saved_model.pb
    call_seconds: float = 0.0  # one single-image call, measured at warm-up
    #: A batch of 4's time per image over a single image's, measured at warm-up (LiteRT);
    #: 1.0 where not measured. The engine joins waiting requests where this is under 0.9.
    batch_cost: float = 1.0
    #: A hand-feature head's photo-or-landmarks -> features step (None: an image model).
    hands: HandPipeline | None = None

    @property
    def joins(self) -> bool:
        """Whether requests waiting for this model at once go through one call."""
        return self.batch_cost < JOIN_BELOW

    @property
    def version_label(self) -> str:
        return str(self.version)

    @functools.cached_property
    def spec(self) -> ImageSpec:
        """What every image is decoded to for this model (built once, used per image): its
        input contract, or for a hand-feature head the hand detector's input size."""
        if self.hands is not None:
            width, height = hands.DETECT_SIZE
            return ImageSpec(height, width, 3)
        return self.manifest.image.image_spec


@dataclass(frozen=True)
class RefusedModel:
    name: str
    version: int | None
    reason: str


@dataclass(frozen=True)
class UnloadedModel:
    """A model whose served version was removed from disk and that has no version left."""

    name: str
    version: int
    reason: str


class ModelRegistry:
    """All models of one worker; ``ready`` turns true once every model is loaded and warm."""

    def __init__(self, cfg: ServiceConfig, metrics: Any = None) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.models: dict[str, LoadedModel] = {}
        self.refused: list[RefusedModel] = []
        self.runtime_name: str | None = None
        self.names: list[str] = []  # every model of the folder (and pinned), served or not
        #: Models unloaded because their last version left the disk (reload on), by name.
        self.unloaded: dict[str, UnloadedModel] = {}
        self._ready = threading.Event()
        self._emptied = False  # was ready, then lost every model to unload()
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
                self._refuse(name, self.cfg.versions[name], f"pinned, but {name}/ is absent")
        self.names = sorted(set(available) | set(self.cfg.versions))
        self.runtime_name = choose_runtime_name(self.cfg.runtime)
        log.info("runtime: %s (requested %s)", self.runtime_name, self.cfg.runtime)
        for name in available:
            version = self.cfg.versions.get(name) or available[name][-1]
            model, reason = self.try_load(name, version)
            if model is None:
                self.refuse(name, version, reason)
            else:
                self.switch(model)
        log.info("serving %s; refused %s", sorted(self.models), [r.name for r in self.refused])
        default = self.default_name()
        if default and default not in self.models:
            log.error(
                "the default model %r is not served (served: %s): requests without model= "
                "get 503 model_unavailable",
                default,
                ", ".join(sorted(self.models)) or "none",
            )

    def try_load(self, name: str, version: int) -> tuple[LoadedModel | None, str]:
        """Load, verify and warm one version: ``(model, "")``, or ``(None, why it failed)``.

        Touches nothing shared, so the reload watcher runs it in a thread while requests are
        served from the current versions.
        """
        try:
            return self._load_one(Path(self.cfg.models_dir), name, version), ""
        except (ArtifactError, ValueError, OSError, RuntimeError, ImportError) as exc:
            return None, str(exc)

    def switch(self, model: LoadedModel) -> LoadedModel | None:
        """Serve ``model`` for its name from now on; returns the version it replaced.

        One dict assignment, so a request resolves either the old or the new version, never a
        mix; requests that already resolved the old one keep their reference and finish on it.
        ``handserve_model_info`` turns the old version's series to 0 and the new one's to 1
        (a gauge in "max" mode: 1 while any worker still serves the old version).
        """
        old = self.models.get(model.name)
        self.models[model.name] = model
        self.unloaded.pop(model.name, None)
        if self._emptied:
            # The worker had nothing left to serve (every version removed) and has again.
            self._emptied = False
            self.load_error = None
            self._ready.set()
            log.info("serving again: %s/%s", model.name, model.version)
        if model.name not in self.names:
            self.names = sorted({*self.names, model.name})
        if self.metrics is not None:
            if old is not None:
                self._info(old).set(0)
            self._info(model).set(1)
        if old is not None:
            log.info("switched %s from version %s to %s", model.name, old.version, model.version)
        return old

    def _info(self, model: LoadedModel) -> Any:
        return self.metrics.model_info.labels(
            name=model.name,
            version=model.version_label,
            runtime=model.runtime.name,
            sha256=model.sha256,
        )

    # ------------------------------------------------------------------ versions leaving disk
    def on_disk(self, model: LoadedModel) -> bool:
        """Whether the served version's manifest and the file it runs are still in its folder."""
        vdir = model.version_dir
        return (vdir / artifacts.MANIFEST).is_file() and (vdir / model.runtime.file).exists()

    def removed(self) -> list[LoadedModel]:
        """Served versions whose files left the disk (the reload watcher acts on them)."""
        return [m for m in list(self.models.values()) if not self.on_disk(m)]

    def fallbacks(self, model: LoadedModel) -> list[int]:
        """Versions that may replace a removed one, newest first: those still on disk and not
        refused before; none for a pinned name (pinned means that version and no other)."""
        if model.name in self.cfg.versions:
            return []
        tried = {r.version for r in self.refused if r.name == model.name}
        versions = artifacts.list_versions(Path(self.cfg.models_dir), model.name)
        return [v for v in reversed(versions) if v != model.version and v not in tried]

    def unload(self, model: LoadedModel, reason: str) -> None:
        """Stop serving ``model`` (its files are gone and no version can replace it).

        Requests naming it get 404 ``unknown_model`` with the reason, requests for the default
        model 503 ``model_unavailable``; when no model is left the worker turns unready
        (``/readyz`` 503, predictions 503 ``not_ready`` with the reason) until a version is
        published again and loaded by the watcher.
        """
        if self.models.get(model.name) is not model:
            return
        del self.models[model.name]
        self.unloaded[model.name] = UnloadedModel(model.name, model.version, reason)
        if self.metrics is not None:
            self._info(model).set(0)
        log.error("unloaded %s/%s: %s", model.name, model.version, reason)
        if not self.models and self._ready.is_set():
            self.load_error = (
                f"no model is served: {model.name} version {model.version} was unloaded ({reason})"
            )
            self._emptied = True
            self._ready.clear()
            log.error("%s; /readyz answers 503 until a version is published", self.load_error)

    def pending(self) -> list[tuple[str, int]]:
        """Newest published versions not yet served nor refused (pinned names never move)."""
        tried = {(r.name, r.version) for r in self.refused}
        out = []
        for name, versions in artifacts.list_models(Path(self.cfg.models_dir)).items():
            served = self.models.get(name)
            latest = versions[-1]
            if name in self.cfg.versions or (name, latest) in tried:
                continue
            if served is None or latest > served.version:
                out.append((name, latest))
        return out

    def refuse(self, name: str, version: int | None, reason: str) -> None:
        """Record a model (version) that will not be served, with the reason, for ``/models``."""
        self._refuse(name, version, reason)

    def _refuse(self, name: str, version: int | None, reason: str) -> None:
        log.error("refusing model %s/%s: %s", name, version, reason)
        # Clients see the reason in /models and in 503s: paths relative to the models folder,
        # never where the server keeps its files.
        for prefix in {str(Path(self.cfg.models_dir).resolve()), str(self.cfg.models_dir)}:
            reason = reason.replace(prefix.rstrip("/") + "/", "")
        self.refused.append(RefusedModel(name, version, reason[:500]))

    def _load_one(self, root: Path, name: str, version: int) -> LoadedModel:
        vdir = artifacts.version_dir(root, name, version)
        assert self.runtime_name is not None
        manifest = artifacts.load_verified(vdir, self.runtime_name, self.cfg.litert_file)
        pipeline = None
        if manifest.hand_features is not None:
            # A hand-feature head: the hand models must be the ones its features came from
            # (checked here), and its embedder is read once, now.
            pipeline = HandPipeline(vdir, manifest.hand_features)
        elif manifest.input.crop is not None:
            # Its contract crops the hand: refuse it now (HandModelsMissing names the fix) rather
            # than answer every request 503; the models' checksums are checked here too. The
            # detectors themselves are built on first use, one per decoding thread.
            hands.check_models()
        runtime = open_runtime(
            vdir,
            manifest,
            runtime=self.runtime_name,
            litert_file=self.cfg.litert_file,
            num_threads=self.cfg.num_threads,
            instances=self.cfg.interpreters,
        )
        file = artifacts.served_format(self.runtime_name, self.cfg.litert_file).main_file
        sha = next((e.sha256 for e in manifest.files if e.path == file), "")
        model = LoadedModel(name, version, manifest, runtime, vdir, sha, hands=pipeline)
        self.warm_up(model)
        log.info(
            "loaded %s/%s (%s, %s, %.2f ms per image; a batch of 4: %.2fx per image)",
            name,
            version,
            runtime.name,
            runtime.file,
            1000 * model.call_seconds,
            model.batch_cost,
        )
        return model

    def warm_up(self, model: LoadedModel) -> None:
        """Run dummy batches of the sizes traffic will bring, on every interpreter of the pool.

        LiteRT builds an interpreter per batch size on first use and the SavedModel traces a
        graph per shape; doing it here keeps that cost out of the first requests.
        """
        shape = model.manifest.input.shape
        if model.runtime.name == LiteRTRuntime.name:
            # Single images and the common small batches; a larger batch builds its interpreter
            # on first use (tens of ms) rather than every worker holding its memory from start.
            sizes, copies = [1, min(8, self.cfg.max_batch_images)], self.cfg.interpreters
        else:
            sizes, copies = [1, min(8, self.cfg.max_batch_size), self.cfg.max_batch_size], 1
        sizes = sorted(set(sizes))
        one = np.zeros((1, *shape), np.uint8)
        timings = []
        for _ in range(max(5, self.cfg.warmup_batches)):
            t0 = time.perf_counter()
            model.runtime.predict(one)
            timings.append(time.perf_counter() - t0)
        model.call_seconds = sorted(timings)[len(timings) // 2]
        if model.runtime.name == LiteRTRuntime.name and self.cfg.join_requests:
            model.batch_cost = self._batch_cost(model, one)
            if model.batch_cost < JOIN_BELOW:  # joined calls will be of 2, 4 and 8 images
                sizes = sorted({*sizes, 2, 4, min(8, MAX_JOINED)})
        if isinstance(model.runtime, LiteRTRuntime) and self.cfg.spare_cores:
            for _ in range(3):  # builds the interpreter with a thread per core
                model.runtime.predict_wide(one, available_cpus())
        for _ in range(self.cfg.warmup_batches * copies):
            for n in sizes:
                out = model.runtime.predict(np.zeros((n, *shape), np.uint8))
                if out.shape != (n, model.manifest.num_classes):
                    raise ArtifactError(
                        model.version_dir,
                        f"model outputs shape {out.shape}, expected "
                        f"({n}, {model.manifest.num_classes}) for {model.manifest.num_classes} "
                        "labels",
                    )

    @staticmethod
    def _batch_cost(model: LoadedModel, one: np.ndarray, rounds: int = 7) -> float:
        """A batch of 4's time per image over a single image's, the median of ``rounds``
        alternating pairs (so a busy moment of the machine hits both alike; the first rounds
        also build each interpreter's batch-of-4 copy, and the median leaves them out)."""
        four = np.repeat(one, 4, axis=0)
        ratios = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            model.runtime.predict(one)
            t1 = time.perf_counter()
            model.runtime.predict(four)
            t2 = time.perf_counter()
            ratios.append((t2 - t1) / 4 / max(t1 - t0, 1e-9))
        return sorted(ratios)[len(ratios) // 2]

    def default_name(self) -> str | None:
        """The configured default model, else the first model of the folder by name.

        The first of *all* models found, served or refused: if the default is refused,
        requests that name no model must learn that, not get another model's labels.
        """
        if self.cfg.default_model:
            return self.cfg.default_model
        return next(iter(self.names), None)

    def resolve(self, name: str | None, version: int | None) -> LoadedModel:
        """The model a request asks for.

        Raises:
            ApiError: 404 when no such model or version is served; 503 ``model_unavailable``
                when the default model was refused at start (with the reason).
        """
        asked = name
        name = name or self.default_name()
        if name is None:
            raise ApiError("unknown_model", "no model is being served")
        model = self.models.get(name)
        if model is None:
            refused = next((r for r in self.refused if r.name == name), None)
            served = ", ".join(sorted(self.models)) or "none"
            if asked is None:
                gone = self.unloaded.get(name)
                if gone is not None:
                    why = f"version {gone.version} was unloaded: {gone.reason}"
                else:
                    why = f"refused at start: {refused.reason}" if refused else "it is not served"
                raise ApiError(
                    "model_unavailable",
                    f"the default model {name!r} is unavailable ({why}); name another model "
                    f"with model= (served: {served})",
                    headers={"Retry-After": "60"},
                )
            gone = self.unloaded.get(name)
            if gone is not None:
                why = f" (version {gone.version} was unloaded: {gone.reason})"
            else:
                why = f" (refused at start: {refused.reason})" if refused else ""
            raise ApiError("unknown_model", f"model {name!r} is not served{why}; served: {served}")
        if version is not None and version != model.version:
            raise ApiError(
                "unknown_version",
                f"model {name!r} version {version} is not served; served version: {model.version}",
            )
        return model

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
                    # False once the served version's files left the disk: still served from
                    # memory (reload off), or about to be replaced or unloaded (reload on).
                    "on_disk": self.on_disk(m),
                    "default": name == self.default_name(),
                    "labels": man.labels,
                    "input": _describe_input(man),
                    "runtime": m.runtime.name,
                    "file": m.runtime.file,
                    # measured at warm-up, in this worker: whether waiting requests are joined
                    "call_ms": round(1000 * m.call_seconds, 3),
                    "joins_requests": m.joins,
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
            "unloaded": [
                {"name": u.name, "version": u.version, "reason": u.reason}
                for u in sorted(self.unloaded.values(), key=lambda u: u.name)
            ],
        }


def _describe_input(man: Manifest) -> dict[str, Any]:
    """What a model takes, as ``/models`` says it: an image contract, or a hand-feature head's
    (a photo, or a hand as landmark tensors, names and shapes as the v2 protocol takes them)."""
    hand = man.hand_features
    if hand is not None:
        return {
            **hand.to_dict(),  # "type": "hand_features", kind, size, hand models, embedder, ...
            "landmark_tensors": {k: list(v) for k, v in LANDMARK_TENSORS.items()},
        }
    image = man.image
    return {
        "height": image.height,
        "width": image.width,
        "channels": image.channels,
        "color_mode": image.color_mode,
        "dtype": image.dtype,
        "value_range": list(image.value_range),
        "crop": image.crop,
    }
