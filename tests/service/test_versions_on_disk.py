"""Versions follow the disk, against a real ``bentoml serve``: a served version folder deleted
with ``rm -rf`` never turns into a 500, and with reload on the server falls back or unloads.

Before the fix, ``/predict_batch`` with 3, 5 or 33 images answered 500 once the folder was gone
(an interpreter for a batch size not built at warm-up was opened from the file), ``/readyz``
stayed 200 and ``/models`` listed ``versions=[]`` while serving version 1.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import requests

from service.local_server import wait_ready
from tests.service.helpers import Traffic, digit_png, running_server
from tests.service.test_reload import (
    model_info,
    models_of,
    publish,
    reloading_env,
    served,
    wait_for,
)

pytestmark = [pytest.mark.server, pytest.mark.slow]

#: Batch sizes no interpreter is built for at warm-up (1 and 8 are): padded to 4, 8... and 64.
SIZES = (3, 5, 33)


def batch(url: str, n: int, **params: Any) -> requests.Response:
    files = [("files", (f"{i}.png", digit_png(i), "image/png")) for i in range(n)]
    return requests.post(url + "/predict_batch", files=files, params=params, timeout=60)


def models_entry(url: str, name: str) -> dict[str, Any]:
    body = requests.get(url + "/models", timeout=10).json()
    return next(m for m in body["models"] if m["name"] == name)


def test_reload_off_keeps_serving_a_deleted_version_and_says_so(
    tiny_export: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    publish(tiny_export, models, "digits", 1)
    env = {"HANDSERVE_RUNTIME": "litert", "HANDSERVE_WORKERS": "1"}
    with running_server(models, tmp_path, env) as (url, proc, _):
        wait_ready(url, proc, timeout=180)
        assert models_entry(url, "digits")["on_disk"] is True
        shutil.rmtree(models / "digits" / "1")
        for n in SIZES:
            r = batch(url, n)
            assert r.status_code == 200, r.text
            assert r.json()["version"] == 1 and len(r.json()["results"]) == n
        entry = models_entry(url, "digits")
        assert (entry["version"], entry["versions"], entry["on_disk"]) == (1, [], False)
        assert requests.get(url + "/readyz", timeout=5).status_code == 200
        assert model_info(url)[("digits", "1")] == 1  # still what is served


def test_reload_on_falls_back_then_unloads_then_serves_again(
    tiny_export: Path, tmp_path: Path
) -> None:
    models = models_of(tiny_export, tmp_path, ("digits", 1), ("digits", 2), ("solo", 1))
    env = reloading_env()  # two workers: each notices on its own tick
    with running_server(models, tmp_path, env) as (url, proc, _):
        wait_ready(url, proc, timeout=180)
        assert served(url) == {"digits": 2, "solo": 1}

        # The newest version disappears under load: version 1 takes over, nothing fails.
        with Traffic(lambda i: batch(url, SIZES[i % len(SIZES)], model="digits")) as traffic:
            wait_for(lambda: sum(traffic.seen.values()) >= 3, "traffic flows")
            shutil.rmtree(models / "digits" / "2")
            wait_for(lambda: served(url)["digits"] == 1, "/models shows digits 1")
            wait_for(lambda: sum(traffic.seen.values()) >= 6, "traffic after the fallback")
        assert traffic.errors == [], traffic.errors
        assert {v for _, v in traffic.seen} == {1, 2}, traffic.seen
        info = model_info(url)
        assert (info[("digits", "2")], info[("digits", "1")]) == (0, 1)
        assert models_entry(url, "digits")["on_disk"] is True
        pinned = batch(url, 3, model="digits", version=2)
        assert pinned.status_code == 404, pinned.text
        assert pinned.json()["error"]["code"] == "unknown_version"

        # A model's only version disappears: it is unloaded, the others keep serving.
        shutil.rmtree(models / "solo" / "1")
        wait_for(lambda: "solo" not in served(url), "solo unloaded")
        r = batch(url, 5, model="solo")
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "unknown_model"
        assert "removed from disk" in r.json()["error"]["message"]
        body = requests.get(url + "/models", timeout=10).json()
        assert [(u["name"], u["version"]) for u in body["unloaded"]] == [("solo", 1)]
        assert model_info(url)[("solo", "1")] == 0
        assert requests.get(url + "/readyz", timeout=5).status_code == 200
        assert batch(url, 33).status_code == 200  # the default model, digits 1

        # The last model goes: the server is unready and says why, until one is published.
        shutil.rmtree(models / "digits")
        wait_for(lambda: requests.get(url + "/readyz", timeout=5).status_code == 503, "/readyz 503")
        r = batch(url, 3)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "not_ready"
        assert "removed from disk" in r.json()["error"]["message"]
        assert served(url) == {}
        assert model_info(url)[("digits", "1")] == 0

        publish(tiny_export, models, "digits", 3)
        wait_ready(url, proc, timeout=60)
        wait_for(lambda: served(url) == {"digits": 3}, "digits 3 served by every worker")
        r = batch(url, 5)
        assert r.status_code == 200 and r.json()["version"] == 3, r.text
        unloaded = requests.get(url + "/models", timeout=10).json()["unloaded"]
        assert [u["name"] for u in unloaded] == ["solo"]  # digits is back, solo is not
