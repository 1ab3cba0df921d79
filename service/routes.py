"""FastAPI routes declared on a service class's methods, bound to the running instance.

The service class is where a reader finds every endpoint with its parameters, so its methods
carry the route decorators. BentoML offers this too (``@app.post`` on a method of an
``@bentoml.asgi_app`` class), but binds ``self`` through a plain-function FastAPI dependency,
which FastAPI runs in a worker thread: measured here, that thread hand-off per request cost
about 0.4 ms at concurrency 1 and as much CPU as the whole model call of a small CNN. This
binds ``self`` with a direct call instead; FastAPI still builds the parameters, validation and
OpenAPI from the method's typed signature.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI


class ClassRoutes:
    """Collects ``@routes.post(...)``/``@routes.get(...)`` on methods; :meth:`bind` adds them."""

    def __init__(self) -> None:
        self._declared: list[tuple[str, str, Callable[..., Any], dict[str, Any]]] = []

    def _route(self, method: str, path: str, **options: Any) -> Callable[[Any], Any]:
        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            self._declared.append((method, path, fn, options))
            return fn

        return decorator

    def post(self, path: str, **options: Any) -> Callable[[Any], Any]:
        return self._route("POST", path, **options)

    def get(self, path: str, **options: Any) -> Callable[[Any], Any]:
        return self._route("GET", path, **options)

    def bind(self, app: FastAPI, instance: Callable[[], Any]) -> None:
        """Add every declared route to ``app``, calling the method on ``instance()``."""
        for method, path, fn, options in self._declared:
            app.add_api_route(path, _bound(fn, instance), methods=[method], **options)


def _bound(fn: Callable[..., Any], instance: Callable[[], Any]) -> Callable[..., Any]:
    """An endpoint with ``fn``'s signature minus ``self`` (annotations resolved for FastAPI)."""
    hints = typing.get_type_hints(fn, include_extras=True)
    params = [
        p.replace(annotation=hints.get(p.name, p.annotation), kind=inspect.Parameter.KEYWORD_ONLY)
        for p in list(inspect.signature(fn).parameters.values())[1:]
    ]

    @functools.wraps(fn)
    async def endpoint(**kwargs: Any) -> Any:
        return await fn(instance(), **kwargs)

    endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        params, return_annotation=hints.get("return", inspect.Signature.empty)
    )
    del endpoint.__wrapped__  # FastAPI must read the signature above, not fn's
    return endpoint
