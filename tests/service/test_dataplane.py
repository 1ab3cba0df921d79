"""The data plane (service/dataplane.py) on its own: what every protocol calls.

No HTTP here: the plane is loaded through its real ``load`` and asked directly, so a protocol
front end (REST, typed API, v2 REST, gRPC) only has to translate. The app-level tests check
that the front ends give the plane's answers.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest

from handserve import artifacts
from handserve.images import decode_image
from service import metrics as metrics_mod
from service.config import ServiceConfig
from service.dataplane import DataPlane
from service.errors import ApiError
from tests.service.helpers import digit_png

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models_dir(tiny_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plane") / "models"
    shutil.copytree(tiny_export, root / "tiny" / "1")
    return root


def plane_for(models_dir: Path, **settings: object) -> DataPlane:
    from prometheus_client import CollectorRegistry

    cfg = ServiceConfig(models_dir=str(models_dir), runtime="litert", **settings)  # type: ignore[arg-type]
    return DataPlane(cfg, metrics_mod.create(cfg.max_batch_size, CollectorRegistry()))


def test_a_plane_refuses_until_loaded_and_opened(models_dir: Path) -> None:
    plane = plane_for(models_dir)
    with pytest.raises(ApiError) as err:
        plane.resolve(None, None)
    assert err.value.code == "not_ready" and err.value.headers["Retry-After"] == "1"

    async def load() -> None:
        await plane.load()
        try:
            assert not plane.ready  # loaded, but the service has not opened it yet
            plane.mark_ready()
            assert plane.ready
        finally:
            await plane.stop()

    asyncio.run(load())
    assert plane.resolve(None, None).name == "tiny"
    assert [(m["name"], m["version"]) for m in plane.describe()["models"]] == [("tiny", 1)]


def test_images_and_tensors_give_the_same_scores_within_the_admission_cap(
    models_dir: Path,
) -> None:
    plane = plane_for(models_dir, max_inflight_images=3, max_batch_images=3)
    blobs = [digit_png(i) for i in range(3)]

    async def run() -> tuple[np.ndarray, np.ndarray]:
        await plane.load()
        plane.mark_ready()
        model = plane.resolve("tiny", 1)
        spec = artifacts.read_manifest(models_dir / "tiny" / "1").input.image_spec
        pixels = np.stack([decode_image(b, spec) for b in blobs])
        from_files = await plane.classify(model, blobs)
        from_tensors = await plane.classify_tensors(model, pixels)
        plane.admission.acquire(1)  # one image of another request in flight: 3 more is over
        try:
            with pytest.raises(ApiError) as err:
                await plane.classify(model, blobs)
            assert err.value.code == "overloaded"
        finally:
            plane.admission.release(1)
        await plane.stop()
        return from_files, from_tensors

    from_files, from_tensors = asyncio.run(run())
    assert from_files.shape == (3, len(artifacts.read_manifest(models_dir / "tiny" / "1").labels))
    np.testing.assert_allclose(from_files, from_tensors, atol=1e-6)
    assert plane.admission.inflight == 0


def test_an_unknown_model_or_version_is_refused_by_name(models_dir: Path) -> None:
    plane = plane_for(models_dir)

    async def load() -> None:
        await plane.load()
        plane.mark_ready()

    asyncio.run(load())
    for name, version, code in (("nope", None, "unknown_model"), ("tiny", 9, "unknown_version")):
        with pytest.raises(ApiError) as err:
            plane.resolve(name, version)
        assert err.value.code == code


def test_single_images_waiting_together_share_one_model_call_where_it_pays(
    models_dir: Path,
) -> None:
    """Requests that reach a worker together go through one call for a model whose batches
    cost less per image (LiteRT, measured at warm-up), each answered its own scores; one that
    stopped waiting (its deadline passed, its client left) is left out; a model whose batches
    gain nothing runs each request alone."""
    from service.registry import MAX_JOINED

    plane = plane_for(models_dir, max_inflight_images=64)
    blobs = [digit_png(i) for i in range(MAX_JOINED + 2)]
    calls: list[int] = []

    async def run() -> tuple[np.ndarray, list[np.ndarray], float]:
        await plane.load()
        plane.mark_ready()
        model = plane.resolve("tiny", 1)
        measured = model.batch_cost
        alone = await plane.classify(model, blobs)  # one request of every image: not joined
        predict = model.runtime.predict

        def counted(x: np.ndarray) -> np.ndarray:
            calls.append(len(x))
            return predict(x)

        model.runtime.predict = counted  # type: ignore[method-assign]
        model.batch_cost = 0.5  # as MobileNetV2's warm-up measures it
        together = list(await asyncio.gather(*(plane.classify(model, [b]) for b in blobs[:5])))
        tasks = [asyncio.create_task(plane.classify(model, [b])) for b in blobs[:3]]
        await asyncio.sleep(0)  # all three decoded and waiting for the joined call
        tasks[1].cancel()
        together += [await tasks[0], await tasks[2]]
        together += list(await asyncio.gather(*(plane.classify(model, [b]) for b in blobs)))
        model.batch_cost = 1.0  # batches gain nothing: never joined
        await asyncio.gather(*(plane.classify(model, [b]) for b in blobs[:3]))
        model.batch_cost = 0.5  # a slow model: the loop's budget holds two of its calls
        model.call_seconds = plane.engine.inline.seconds / 2  # type: ignore[union-attr]
        await asyncio.gather(*(plane.classify(model, [b]) for b in blobs[:5]))
        await plane.stop()
        return alone, together, measured

    alone, together, measured = asyncio.run(run())
    assert measured != 1.0  # measured at warm-up (LiteRT, join_requests on)
    # 5 as 4 + 1; 2 of 3 (one cancelled); MAX_JOINED + 2 as MAX_JOINED, then 2; then alone;
    # then 5 of a slow model, two at a time
    assert calls == [4, 1, 2, MAX_JOINED, 2, 1, 1, 1, 2, 2, 1]
    want = [*alone[:5], alone[0], alone[2], *alone]
    np.testing.assert_allclose(np.concatenate(together), np.stack(want), atol=1e-6)
    assert plane.admission.inflight == 0
    off = plane_for(models_dir, join_requests=False)
    asyncio.run(off.load())
    assert off.models["tiny"].batch_cost == 1.0 and not off.models["tiny"].joins


def test_a_single_image_runs_on_every_core_while_the_other_workers_idle(
    models_dir: Path,
) -> None:
    """With the machine's other cores idle (the service reads its peers' published load), a
    single image's call runs on the interpreter with a thread per core; a batch, or any call
    while a peer works, on the worker's own single-threaded ones. The answers are the same."""
    plane = plane_for(models_dir)
    idle = [True]
    plane.spare_cores = lambda: idle[0]
    blobs = [digit_png(i) for i in range(3)]
    wide: list[int] = []

    async def run() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        await plane.load()
        plane.mark_ready()
        model = plane.resolve("tiny", 1)
        model.batch_cost = 1.0  # not joined: one call per request
        model.call_seconds = 0.001  # as a model that gains from a second thread
        predict_wide = model.runtime.predict_wide  # type: ignore[union-attr]

        def recorded(x: np.ndarray, threads: int) -> np.ndarray:
            wide.append(len(x))
            return predict_wide(x, threads)

        model.runtime.predict_wide = recorded  # type: ignore[union-attr]
        one = await plane.classify(model, blobs[:1])
        three = await plane.classify(model, blobs)  # a batch: the worker's own interpreters
        idle[0] = False
        busy = await plane.classify(model, blobs[:1])  # a peer works: its core is not free
        await plane.stop()
        return one, three, busy

    one, three, busy = asyncio.run(run())
    assert wide == [1]
    np.testing.assert_allclose(one, three[:1], atol=1e-6)
    np.testing.assert_allclose(one, busy, atol=1e-6)


def test_an_image_over_the_pixel_cap_is_refused_as_such_while_others_are_in_flight(
    models_dir: Path,
) -> None:
    """Its header says it is over ``max_pixels``: it is refused (413 too_many_pixels) without
    being decoded, so admission does not count its pixels; counted, it was a 503
    ``overloaded`` whenever another request was in flight (found by benchmarks/reliability.py
    once requests waited together for a joined call)."""
    import io

    from PIL import Image

    plane = plane_for(
        models_dir,
        max_pixels=1_000_000,
        max_request_pixels=2_000_000,
        max_inflight_pixels=2_000_000,
    )
    buf = io.BytesIO()
    Image.new("L", (2000, 2000)).save(buf, format="PNG")  # 4 MP, a few kB: over both caps

    async def run() -> ApiError:
        await plane.load()
        plane.mark_ready()
        model = plane.resolve("tiny", 1)
        plane.admission.acquire(1, 784)  # another request's image in flight
        try:
            with pytest.raises(ApiError) as err:
                await plane.classify(model, [buf.getvalue()])
        finally:
            plane.admission.release(1, 784)
            await plane.stop()
        return err.value

    refused = asyncio.run(run())
    assert (refused.code, refused.status) == ("too_many_pixels", 413)
    assert plane.admission.inflight == 0 and plane.admission.inflight_pixels == 0
