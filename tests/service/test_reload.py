"""Model hot reload against a real ``bentoml serve``: publish while serving, refuse a bad one.

The exports are published as ``handserve train --export`` publishes them: written into a
``.staging-*`` folder and renamed to ``models/NAME/VERSION`` in one step.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from handserve import artifacts
from service.local_server import wait_ready
from tests.service.helpers import Traffic, corrupt, digit_png, running_server
from tests.staging import staging

pytestmark = [pytest.mark.server, pytest.mark.slow]

INTERVAL_S = 0.5


def publish(src: Path, models: Path, name: str, version: int, *, bad: bool = False) -> Path:
    """Copy an export to ``models/name/version`` through a staging folder and one rename."""
    with staging(models, name) as tmp:
        shutil.rmtree(tmp)
        shutil.copytree(src, tmp)
        data = artifacts.read_manifest(tmp).to_dict()
        data["name"], data["version"] = name, version
        artifacts.write_manifest(tmp, artifacts.Manifest.from_dict(data))
        if bad:
            corrupt(tmp)  # model.tflite no longer matches its checksum
        return artifacts.publish(tmp, models, name, version)


def models_of(src: Path, tmp_path: Path, *versions: tuple[str, int]) -> Path:
    """A models folder under ``tmp_path`` with ``src`` published as each ``(name, version)``."""
    models = tmp_path / "models"
    for name, version in versions:
        publish(src, models, name, version)
    return models


def model_info(url: str) -> dict[tuple[str, str], float]:
    text = requests.get(url + "/metrics", timeout=30).text
    return {
        (s.labels["name"], s.labels["version"]): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "handserve_model_info"
    }


def served(url: str) -> dict[str, int]:
    return {
        m["name"]: m["version"] for m in requests.get(url + "/models", timeout=10).json()["models"]
    }


def wait_for(check: Any, what: str, timeout: float = 60) -> None:
    """Until ``check()`` holds on every call for a second (every worker answers alike)."""
    deadline, streak = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        streak = streak + 1 if check() else 0
        if streak >= 10:
            return
        time.sleep(0.1)
    raise AssertionError(f"not reached in {timeout}s: {what}")


def reloading_env(**extra: str) -> dict[str, str]:
    """A LiteRT server of two workers, each rescanning the models folder on its own every
    INTERVAL_S, ``digits`` the default model; ``extra`` variables on top."""
    return {
        "HANDSERVE_RUNTIME": "litert",
        "HANDSERVE_WORKERS": "2",
        "HANDSERVE_RELOAD_INTERVAL_S": str(INTERVAL_S),
        "HANDSERVE_DEFAULT_MODEL": "digits",
        **extra,
    }


def test_new_version_is_served_bad_one_refused_pinned_stays(
    tiny_export: Path, tmp_path: Path
) -> None:
    models = models_of(tiny_export, tmp_path, ("digits", 1), ("pinned", 1))
    env = reloading_env(HANDSERVE_VERSIONS="pinned=1")
    with running_server(models, tmp_path, env) as (url, proc, _):
        wait_ready(url, proc, timeout=180)
        assert served(url) == {"digits": 1, "pinned": 1}
        # A half-written export is no version: never loaded, never refused.
        (models / "digits" / ".staging-unfinished").mkdir()
        image = digit_png(3)

        def predict(i: int) -> requests.Response:
            return requests.post(url + "/predict?model=digits", files={"image": image}, timeout=30)

        with Traffic(predict) as traffic:
            time.sleep(1)
            publish(tiny_export, models, "digits", 2)
            publish(tiny_export, models, "pinned", 2)
            wait_for(lambda: served(url)["digits"] == 2, "/models shows digits 2")
            wait_for(lambda: model_info(url).get(("digits", "1")) == 0, "old version's gauge 0")
            time.sleep(1)
        statuses = Counter[int]()
        for (status, _), n in traffic.seen.items():
            statuses[status] += n
        assert sum(statuses.values()) >= 10, traffic.seen  # traffic flowed through the switch
        assert statuses == {200: statuses[200]}, traffic.seen  # no refusal during the switch
        versions = {version for _, version in traffic.seen}
        assert versions == {1, 2}, traffic.seen
        info = model_info(url)
        assert info[("digits", "2")] == 1 and info[("digits", "1")] == 0
        assert info[("pinned", "1")] == 1 and ("pinned", "2") not in info
        assert served(url) == {"digits": 2, "pinned": 1}  # pinned does not move

        publish(tiny_export, models, "digits", 3, bad=True)

        def refused() -> list[dict[str, Any]]:
            return requests.get(url + "/models", timeout=10).json()["refused"]

        wait_for(lambda: any(r["version"] == 3 for r in refused()), "v3 refused by all workers")
        (entry,) = refused()
        assert entry["name"] == "digits" and "sha256" in entry["reason"], entry
        assert str(models) not in entry["reason"]  # no server paths in answers
        for _ in range(10):
            r = requests.post(url + "/predict", files={"image": digit_png(1)}, timeout=30)
            assert r.status_code == 200 and r.json()["version"] == 2
        assert ("digits", "3") not in model_info(url)
        assert served(url) == {"digits": 2, "pinned": 1}


def test_server_started_empty_serves_the_first_published_model(
    tiny_export: Path, tmp_path: Path
) -> None:
    """Models on a volume that a training Job fills later: ready once the first one arrives."""
    models = tmp_path / "models"
    models.mkdir()
    env = {"HANDSERVE_RUNTIME": "litert", "HANDSERVE_RELOAD_INTERVAL_S": str(INTERVAL_S)}
    with running_server(models, tmp_path, env) as (url, proc, _):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the server is up: /livez answers
            try:
                if requests.get(url + "/livez", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        time.sleep(2 * INTERVAL_S)
        assert requests.get(url + "/readyz", timeout=5).status_code == 503
        publish(tiny_export, models, "signs", 1)
        wait_ready(url, proc, timeout=60)
        r = requests.post(url + "/predict", files={"image": digit_png(2)}, timeout=30)
        assert r.status_code == 200, r.text
        assert (r.json()["model"], r.json()["version"]) == ("signs", 1)
        assert model_info(url)[("signs", "1")] == 1


def test_savedmodel_runtime_switches_too(tiny_export: Path, tmp_path: Path) -> None:
    """The GPU path: the new version gets its own batching dispatcher (warmed, then served)."""
    models = tmp_path / "models"
    publish(tiny_export, models, "digits", 1)
    env = {
        "HANDSERVE_RUNTIME": "savedmodel",
        "HANDSERVE_WARMUP_BATCHES": "1",
        "HANDSERVE_RELOAD_INTERVAL_S": str(INTERVAL_S),
    }
    with running_server(models, tmp_path, env) as (url, proc, _):
        wait_ready(url, proc, timeout=180)
        publish(tiny_export, models, "digits", 2)
        wait_for(lambda: served(url)["digits"] == 2, "/models shows digits 2", timeout=120)
        r = requests.post(url + "/predict", files={"image": digit_png(5)}, timeout=30)
        assert r.status_code == 200 and r.json()["version"] == 2, r.text
        info = model_info(url)
        assert (info[("digits", "1")], info[("digits", "2")]) == (0, 1)
