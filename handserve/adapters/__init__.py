"""Private internals of the libraries handserve uses, each library's behind one module: an
upgrade that moves one breaks here, once, with a test naming the library and its version."""

from __future__ import annotations

import importlib.metadata


def installed(library: str) -> str:
    """The installed version of the distribution ``library`` (``"not installed"`` without it)."""
    try:
        return importlib.metadata.version(library)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def moved(library: str, module: str, internal: str, exc: BaseException) -> RuntimeError:
    """The error for an ``internal`` of ``library`` that the installed version no longer has as
    the adapter ``module`` (its file name) uses it."""
    return RuntimeError(
        f"{library} {installed(library)}: {internal} is not as handserve/adapters/{module} "
        f"expects ({type(exc).__name__}: {exc}); adapt that module to this version, or install "
        "the version uv.lock pins"
    )
