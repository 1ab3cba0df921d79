"""BentoML's private internals (handserve/adapters/bentoml.py) are where the project expects."""

from __future__ import annotations

import importlib
import sys
import types

import pytest

from handserve.adapters import bentoml as adapter


def test_the_installed_bentoml_has_every_internal_handserve_uses() -> None:
    found = adapter.problems()
    assert found == [], "BentoML moved what handserve relies on:\n" + "\n".join(found)


def test_a_moved_internal_is_reported_with_the_version_and_what_moved(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The check itself can fail: a dispatcher module without the class, a create() without
    the locals bento_guard reads."""
    real = importlib.import_module

    def fake_import(name: str, *args: object) -> object:
        if name == "bentoml._internal.marshal.dispatcher":
            return types.ModuleType(name)  # the class moved elsewhere

        if name == "bentoml._internal.bento.bento":
            module = types.ModuleType(name)

            class Bento:
                @classmethod
                def create(cls, config: object) -> None:  # renamed locals
                    return None

            module.Bento = Bento  # type: ignore[attr-defined]
            return module
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", fake_import)
    found = adapter.problems()
    version = sys.modules["bentoml"].__version__
    assert len(found) == 2
    assert all(line.startswith(f"bentoml {version}:") for line in found)
    assert "CorkDispatcher is gone" in found[0]
    assert "build_config, build_ctx" in found[1]


def test_cork_dispatcher_batches_items_through_the_function_given() -> None:
    """The adapter's dispatcher is BentoML's: items sent together run as one batch."""
    import asyncio

    batches: list[int] = []

    async def run_batch(items: list[int]) -> list[int]:
        batches.append(len(items))
        return [i * 2 for i in items]

    async def main() -> list[int]:
        dispatcher = adapter.cork_dispatcher(50, 8, lambda: None, lambda item: 1)
        fn = dispatcher(run_batch)
        return list(await asyncio.gather(*(fn(i) for i in range(4))))

    assert asyncio.run(main()) == [0, 2, 4, 6]
    assert sum(batches) == 4


def test_build_locals_finds_the_bento_create_frame_up_the_stack() -> None:
    """``bentoml build`` imports the service module from inside Bento.create: its two locals
    are found however deep the import runs, and nothing outside a build."""
    namespace: dict[str, object] = {"__name__": "bentoml._internal.bento.bento"}
    exec(  # a function named and placed as BentoML's, calling back into this test
        "def create(build_config, build_ctx, then):\n    return then()\n", namespace
    )

    def deeper() -> object:
        return adapter.build_locals()

    create = namespace["create"]
    assert create("CONFIG", "/ctx", deeper) == ("CONFIG", "/ctx")  # type: ignore[operator]
    assert adapter.build_locals() is None
