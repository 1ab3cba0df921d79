"""BentoML's private internals that handserve relies on, in one place.

BentoML 1.4's public API offers neither of these, so the project uses its internals:

- ``CorkDispatcher`` (``bentoml._internal.marshal.dispatcher``): the adaptive batching dispatcher
  behind ``@bentoml.api(batchable=True)``. Public batching exists only behind an HTTP route of
  its own; :class:`service.inference.BatchingEngine` needs it behind every protocol.
- ``Bento.create`` (``bentoml._internal.bento.bento``): ``bentoml build`` imports the service
  module from inside it, the only moment a build runs project code; :mod:`service.bento_guard`
  finds that frame on the stack and reads ``build_config`` and ``build_ctx`` from it.

:func:`problems` says, for the installed BentoML, which of them moved; a unit test calls it, so
an upgrade that breaks one fails with the library's version and what moved, not deep in a
server.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from types import FrameType
from typing import Any

#: (module, function name) of the frame ``bentoml build`` imports the service module from.
BUILD_FRAME = ("bentoml._internal.bento.bento", "create")
#: The locals of that frame that service.bento_guard reads.
BUILD_LOCALS = ("build_config", "build_ctx")
_DISPATCHER = ("bentoml._internal.marshal.dispatcher", "CorkDispatcher")
#: The keyword arguments :func:`cork_dispatcher` passes.
_DISPATCHER_ARGS = ("max_latency_in_ms", "max_batch_size", "fallback", "get_batch_size")


def cork_dispatcher(
    max_latency_ms: int, max_batch_size: int, fallback: Any, get_batch_size: Any
) -> Any:
    """BentoML's adaptive batching dispatcher: call it with an async batch function to get
    the async function that takes one item and answers when its batch has run."""
    module, name = _DISPATCHER
    dispatcher = getattr(importlib.import_module(module), name)
    return dispatcher(
        max_latency_in_ms=max_latency_ms,
        max_batch_size=max_batch_size,
        fallback=fallback,
        get_batch_size=get_batch_size,
    )


def build_locals(frame: FrameType | None = None) -> tuple[Any, Any] | None:
    """``(build_config, build_ctx)`` of the ``Bento.create`` frame this code runs under (a
    ``bentoml build``), walking up from ``frame`` (default: the caller's), else None."""
    frame = frame or sys._getframe(1)
    while frame is not None:
        if (frame.f_globals.get("__name__"), frame.f_code.co_name) == BUILD_FRAME:
            return tuple(frame.f_locals.get(name) for name in BUILD_LOCALS)  # type: ignore[return-value]
        frame = frame.f_back
    return None


def problems() -> list[str]:
    """What of the internals above the installed BentoML no longer has (empty: all there)."""
    import bentoml

    found: list[str] = []
    where = f"bentoml {bentoml.__version__}"
    module, name = _DISPATCHER
    try:
        dispatcher = getattr(importlib.import_module(module), name)
        params = inspect.signature(dispatcher.__init__).parameters
        missing = [a for a in _DISPATCHER_ARGS if a not in params]
        if missing:
            found.append(f"{where}: {module}.{name}() no longer takes {', '.join(missing)}")
    except (ImportError, AttributeError) as exc:
        found.append(f"{where}: {module}.{name} is gone ({exc})")
    module, name = BUILD_FRAME
    try:
        bento_cls = importlib.import_module(module).Bento
        code = inspect.unwrap(getattr(bento_cls, name)).__code__
        missing = [v for v in BUILD_LOCALS if v not in code.co_varnames]
        if code.co_name != name or missing:
            found.append(
                f"{where}: {module}.Bento.{name} no longer has the locals {', '.join(missing)}"
                " that service.bento_guard reads"
            )
    except (ImportError, AttributeError) as exc:
        found.append(f"{where}: {module}.Bento.{name} is gone ({exc})")
    return found
