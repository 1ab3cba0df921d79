"""The batching engine lets go of a model version once a newer one has taken over.

With model hot reload a server may serve many versions over its life; each version's BentoML
dispatcher holds the model. The engine stops an older version's dispatcher after
``retire_after_s`` (the server's request timeout), once requests resolved to it have finished.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from handserve import artifacts
from handserve.runtimes import LiteRTRuntime
from service.inference import BatchingEngine
from service.registry import LoadedModel
from tests.service.helpers import digit_png

pytestmark = pytest.mark.slow


def _version(tiny_export: Path, version: int) -> LoadedModel:
    manifest = artifacts.read_manifest(tiny_export)
    runtime = LiteRTRuntime(tiny_export / "model.tflite")
    return LoadedModel("tiny", version, manifest, runtime, tiny_export, "sha")


def test_an_older_versions_batcher_is_stopped_after_the_grace(tiny_export: Path) -> None:
    old, new = _version(tiny_export, 1), _version(tiny_export, 2)
    engine = BatchingEngine(8, 5, 10_000_000, retire_after_s=0.3)

    async def scenario() -> tuple[list[int], list[int], list[int], np.ndarray, np.ndarray]:
        await engine.warm_up(old, calls=2)
        first = engine.dispatched_versions("tiny")
        await engine.warm_up(new, calls=2)  # a reload warms the new version: old retires
        during = engine.dispatched_versions("tiny")
        # A request resolved to the old version before the switch still gets its answer.
        late = await engine.classify(old, [digit_png(1)])
        await asyncio.sleep(0.6)
        after = engine.dispatched_versions("tiny")
        current = await engine.classify(new, [digit_png(1)])
        return first, during, after, late, current

    first, during, after, late, current = asyncio.run(scenario())
    assert first == [1]
    assert during == [1, 2]
    assert after == [2]
    np.testing.assert_allclose(late, current)
