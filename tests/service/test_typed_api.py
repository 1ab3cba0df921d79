"""The typed BentoML APIs (``/classify``, ``/classify_batch``): BentoML's own clients list and
call them against a real ``bentoml serve`` and get ``/predict``'s answers; a second service
composes handserve with ``bentoml.depends``; the OpenAPI document describes them from their
types; bad input gets the service's 4xx.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import bentoml
import pytest
import requests

from service.local_server import serving, wait_ready
from tests.conftest import REPO
from tests.service.helpers import digit_png

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("typed")
    paths = []
    for seed in range(4):
        paths.append(folder / f"digit{seed}.png")
        paths[-1].write_bytes(digit_png(seed))
    return paths


def predicted(url: str, path: Path, top_k: int = 3) -> dict:
    r = requests.post(
        f"{url}/predict?model=tiny&top_k={top_k}", files={"image": path.read_bytes()}, timeout=30
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_the_sync_client_finds_and_calls_the_typed_endpoints(server, images) -> None:
    with bentoml.SyncHTTPClient(server.url) as client:
        # the client reads the service's schema: these are what it found
        assert {"classify", "classify_batch"} <= set(client.endpoints)
        assert client.endpoints["classify"].route == "/classify"
        for path in images:
            answer = client.classify(image=path, model="tiny", top_k=3)
            assert answer == predicted(server.url, path)
        batch = client.classify_batch(images=images, model="tiny", top_k=3)
    assert batch["model"] == "tiny" and batch["version"] == 1
    assert batch["results"] == [
        {"predictions": predicted(server.url, p)["predictions"]} for p in images
    ]


def test_the_async_client_gets_the_same_answers(server, images) -> None:
    """Concurrent calls, a client each: BentoML 1.4's AsyncHTTPClient closes every file a client
    opened when any of its calls ends (one ``_file_manager`` per client), so concurrent uploads
    of paths through one client can fail with "seek of closed file" on a slow machine."""

    async def one(path: Any) -> dict:
        async with bentoml.AsyncHTTPClient(server.url) as client:
            return dict(await client.classify(image=path, model="tiny", top_k=3))

    async def call() -> list[dict]:
        return list(await asyncio.gather(*(one(p) for p in images)))

    answers = asyncio.run(call())
    assert answers == [predicted(server.url, p) for p in images]


def test_the_default_model_and_top_k_are_the_services(server, images) -> None:
    with bentoml.SyncHTTPClient(server.url) as client:
        answer = client.classify(image=images[0])
    assert answer["model"] == "digits"  # the configured default model
    r = requests.post(server.url + "/predict", files={"image": images[0].read_bytes()}, timeout=30)
    assert answer == r.json()


@pytest.mark.parametrize(
    ("fields", "image"),
    [
        ({"model": "nope"}, digit_png(1)),
        ({"model": "tiny", "version": "7"}, digit_png(1)),
        ({"model": "broken"}, digit_png(1)),  # refused at start: its file was changed
        ({"model": "tiny"}, b"not an image"),
        ({"model": "tiny"}, digit_png(1)[:40]),  # truncated
    ],
)
def test_bad_input_gets_the_status_and_code_of_predict(server, fields, image) -> None:
    typed = requests.post(
        server.url + "/classify", data=fields, files={"image": ("x.png", image, "image/png")}
    )
    fast = requests.post(server.url + "/predict", data=fields, files={"image": image})
    assert 400 <= fast.status_code < 500, fast.text
    assert typed.status_code == fast.status_code, typed.text
    assert typed.json()["error"] == fast.json()["error"]  # one shape (service.errors.JSONErrors)


def test_parameters_are_validated_from_their_types(server) -> None:
    r = requests.post(
        server.url + "/classify",
        data={"model": "tiny", "top_k": "0"},
        files={"image": ("x.png", digit_png(1), "image/png")},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"
    assert "top_k" in r.json()["error"]["message"]  # which parameter, and why
    r = requests.post(server.url + "/classify", data={"model": "tiny"})  # no image at all
    assert r.status_code == 400 and "image" in r.json()["error"]["message"]


def test_the_openapi_document_lists_the_typed_endpoints(server) -> None:
    spec = requests.get(server.url + "/docs.json", timeout=30).json()
    for path in ("/classify", "/classify_batch"):
        post = spec["paths"][path]["post"]
        body = post["requestBody"]["content"]
        assert "multipart/form-data" in body, body.keys()
    schema = spec["paths"]["/classify"]["post"]["requestBody"]["content"]["multipart/form-data"]
    props = (
        schema["schema"].get("properties")
        or spec["components"]["schemas"][schema["schema"]["$ref"].rsplit("/", 1)[1]]["properties"]
    )
    assert {"image", "model", "version", "top_k"} <= set(props)
    assert "/predict" in spec["paths"]  # the fast routes are still there


@pytest.mark.slow
def test_a_service_composing_handserve_gets_the_same_answer(server, images, tmp_path) -> None:
    env = {
        **os.environ,
        "HANDSERVE_URL": server.url,
        "BENTOML_HOME": str(tmp_path / "home"),
        "BENTOML_DO_NOT_TRACK": "true",
        "PYTHONPATH": str(REPO),
    }
    argv = [sys.executable, "-m", "bentoml", "serve", "tests.service.composed:Front"]
    log = tmp_path / "front.log"
    with serving(argv, env=env, cwd=REPO, log_path=log) as (url, proc):
        wait_ready(url, proc, timeout=120, log_path=log)
        for path in images:
            r = requests.post(
                url + "/best_label",
                data={"model": "tiny"},
                files={"image": (path.name, path.read_bytes(), "image/png")},
                timeout=30,
            )
            assert r.status_code == 200, r.text
            best = predicted(server.url, path)["predictions"][0]["label"]
            assert r.json() == {"label": best, "via": "bentoml.depends"}
