"""Model hot reload: a new version that appears in the models folder is served without a restart.

With ``HANDSERVE_RELOAD_INTERVAL_S`` > 0 each worker scans its models folder that often (models
on a volume, k8s overlay ``models-volume``). A newer published version of a served model, or a
model that was not there before, is loaded, verified (checksums) and warmed in a thread while
the current versions keep serving; then the worker switches to it in one step
(:meth:`service.registry.ModelRegistry.switch`). Requests that already hold the old version
finish on it. A version that fails is refused (logged, listed in ``/models``) and not tried
again; the old version keeps serving. Pinned names (``versions``) never move.

A served version whose files leave the disk (its folder deleted) is replaced on the next scan
by the newest remaining version that loads, or, when none is left (or the name is pinned),
unloaded (:meth:`service.registry.ModelRegistry.unload`; docs/service.md, "Versions removed from
disk").

Exports are published by renaming a finished staging folder (``handserve.artifacts.publish``),
so a version folder that exists is complete; ``.staging-*`` folders are not versions. Each
worker process reloads on its own, a scan interval apart at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import anyio

from service.registry import LoadedModel, ModelRegistry

log = logging.getLogger(__name__)

#: What the engine must do with a loaded model before it takes traffic (BentoML's batching
#: dispatcher fits its latency model on a dozen calls); None when nothing is needed.
WarmUp = Callable[[LoadedModel], Awaitable[None]]

#: Why a model was unloaded, as ``/models``, the logs and refused requests say it.
REMOVED = "its files were removed from disk"


class ModelWatcher:
    """One worker's reload loop, an asyncio task on the worker's event loop."""

    def __init__(
        self, registry: ModelRegistry, interval_s: float, warm_up: WarmUp | None = None
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.registry = registry
        self.interval_s = interval_s
        self.warm_up = warm_up
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    def start(self) -> ModelWatcher:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="model-watcher")
        return self

    async def stop(self) -> None:
        """Cancel the loop (a load running in a thread finishes there and is dropped)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait_for_models(self) -> None:
        """Return once the registry serves at least one model (a server started empty)."""
        while not self.registry.models:
            self._changed.clear()
            await self._changed.wait()

    async def _run(self) -> None:
        log.info(
            "watching %s for new model versions every %.1f s",
            self.registry.cfg.models_dir,
            self.interval_s,
        )
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check_once()
            except Exception:  # a scan that fails must not end reloading for good
                log.exception("scanning %s for new versions failed", self.registry.cfg.models_dir)

    async def check_once(self) -> list[tuple[str, int]]:
        """Replace or unload served versions whose files are gone, then load every pending
        version and switch to those that pass; returns the versions switched to."""
        switched = []
        for gone in await anyio.to_thread.run_sync(self.registry.removed):
            log.warning("%s/%s was removed from disk", gone.name, gone.version)
            for version in await anyio.to_thread.run_sync(self.registry.fallbacks, gone):
                if await self._load(gone.name, version):
                    switched.append((gone.name, version))
                    break
            else:
                self.registry.unload(gone, REMOVED)
        pending = await anyio.to_thread.run_sync(self.registry.pending)
        for name, version in pending:
            log.info("new version %s/%s: loading", name, version)
            if await self._load(name, version):
                switched.append((name, version))
        if switched:
            self._changed.set()
        return switched

    async def _load(self, name: str, version: int) -> bool:
        """Load, verify and warm one version in a thread, then serve it; False if refused."""
        model, reason = await anyio.to_thread.run_sync(self.registry.try_load, name, version)
        if model is None:
            self.registry.refuse(name, version, reason)
            return False
        if self.warm_up is not None:
            await self.warm_up(model)
        self.registry.switch(model)
        return True


def start(registry: ModelRegistry, engine: object) -> ModelWatcher | None:
    """The running watcher when ``reload_interval_s`` is set, else None (reload is off).

    ``engine`` is the service's engine: one with a ``warm_up`` coroutine (the batching
    engine) warms each new version through it before the switch.
    """
    interval = registry.cfg.reload_interval_s
    if interval <= 0:
        return None
    warm_up = getattr(engine, "warm_up", None)
    return ModelWatcher(registry, interval, warm_up).start()
