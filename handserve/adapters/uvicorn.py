"""uvicorn's internals that :mod:`service.connections` relies on, in one place.

uvicorn offers no deadline for a request's headers, and BentoML's workers start uvicorn with
``http="auto"``, so the header guard replaces the protocol class registered under ``"auto"`` in
``uvicorn.config.HTTP_PROTOCOLS`` with a subclass of ``AutoHTTPProtocol`` (httptools' or h11's).
The subclass reads and sets attributes of uvicorn's protocol objects: ``cycle`` (the request
being served; its ``response_complete`` and ``keep_alive``), ``timeout_keep_alive``, ``loop``,
``client`` and ``transport``, and overrides its ``shutdown`` method (a graceful stop).
:func:`problems` says which of those the installed uvicorn no longer has; a unit test calls it,
so an upgrade fails there with the version, not as a server that no longer cuts off slow
clients.
"""

from __future__ import annotations

import inspect
from typing import Any

#: Attributes of uvicorn's HTTP protocol objects that the guard uses.
PROTOCOL_ATTRIBUTES = ("cycle", "timeout_keep_alive", "loop", "client", "transport")


def auto_protocol() -> type[Any]:
    """The HTTP protocol class uvicorn picks for ``http="auto"`` (httptools where installed)."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return AutoHTTPProtocol


def register_auto(import_path: str) -> None:
    """Make ``import_path`` (``"module:Class"``) the protocol uvicorn loads for ``"auto"``."""
    from uvicorn import config

    config.HTTP_PROTOCOLS["auto"] = import_path


def problems() -> list[str]:
    """What of the above the installed uvicorn no longer has (empty: all there)."""
    import uvicorn

    where = f"uvicorn {uvicorn.__version__}"
    found = []
    try:
        from uvicorn import config

        if "auto" not in config.HTTP_PROTOCOLS:
            found.append(f"{where}: uvicorn.config.HTTP_PROTOCOLS has no 'auto' entry")
        protocol = auto_protocol()
    except (ImportError, AttributeError) as exc:
        return [*found, f"{where}: the 'auto' HTTP protocol is gone ({exc})"]
    source = inspect.getsource(protocol)
    missing = [a for a in PROTOCOL_ATTRIBUTES if f"self.{a}" not in source]
    if missing:
        found.append(f"{where}: {protocol.__name__} no longer sets {', '.join(missing)}")
    if not callable(getattr(protocol, "shutdown", None)):
        found.append(f"{where}: {protocol.__name__} has no shutdown() to override")
    cycle = _module_source(protocol)
    for attribute in ("response_complete", "keep_alive"):
        if f"self.{attribute}" not in cycle:
            found.append(f"{where}: the request cycle no longer has {attribute}")
    return found


def _module_source(protocol: type[Any]) -> str:
    """The source of the module that defines ``protocol`` (and its request cycle)."""
    module = inspect.getmodule(protocol)
    return inspect.getsource(module) if module is not None else ""
