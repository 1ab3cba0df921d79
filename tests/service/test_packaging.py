"""``bentoml build`` packs the service with its models; the SavedModel runtime serves too."""

from __future__ import annotations

import concurrent.futures as cf
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from handserve import artifacts
from tests.service.helpers import REPO, digit_png, running_server, wait_ready


@pytest.mark.slow
def test_bentoml_build_includes_service_models_and_dockerfile(
    tmp_path: Path, tiny_export: Path
) -> None:
    # Build from a copy of the project with a real export in models/, as a user would after
    # `handserve train --export`, so the check below sees a model that must verify.
    project = tmp_path / "project"
    for rel in ("bentofile.yaml", "handserve", "service", "models/README.md"):
        src_path, dst = REPO / rel, project / rel
        if src_path.is_dir():
            shutil.copytree(src_path, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src_path, dst)
    shutil.copytree(tiny_export, project / "models" / "tiny" / "1")
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home"), "BENTOML_DO_NOT_TRACK": "true"}
    result = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", str(project), "--output", "tag"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=project,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    bentos = list((tmp_path / "home" / "bentos" / "handserve").glob("*/bento.yaml"))
    assert len(bentos) == 1
    bento = bentos[0].parent
    meta = yaml.safe_load(bentos[0].read_text())
    assert meta["service"] == "service.service:HandServe"
    src = bento / "src"
    for rel in (
        "service/service.py",
        "service/parsing.py",
        "handserve/runtimes.py",
        "handserve/images.py",
        "handserve/artifacts.py",
        "service/static/index.html",
        "models/README.md",
    ):
        assert (src / rel).is_file(), rel
    # The model travels whole: every checksum in its manifest holds inside the Bento, so the
    # packaged service can serve it (an excluded file would make it refuse the model).
    manifest = artifacts.load_verified(src / "models" / "tiny" / "1")
    assert manifest.name == "tiny"
    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    assert "FROM python:3.11" in dockerfile
    reqs = (bento / "env" / "python" / "requirements.txt").read_text()
    assert "ai-edge-litert" in reqs and "bentoml==1.4.39" in reqs
    for package in ("fastapi", "pydantic", "uvloop", "httptools"):  # imported or used by serve
        assert package in reqs, package


@pytest.mark.server
@pytest.mark.slow
def test_savedmodel_runtime_serves_the_same_answer_in_batches(server, tmp_path: Path) -> None:
    """The GPU path (SavedModel) joins concurrent requests into batches and answers each one."""
    data = digit_png(9)
    want = requests.post(server.url + "/predict?model=tiny&top_k=10", files={"image": data})
    env = {"HANDSERVE_RUNTIME": "savedmodel", "HANDSERVE_WARMUP_BATCHES": "1"}
    images = [digit_png(i) for i in range(6)]
    with running_server(server.models_dir, tmp_path, env) as (url, proc, _):
        wait_ready(url, proc, timeout=180)
        got = requests.post(url + "/predict?model=tiny&top_k=10", files={"image": data})
        models = requests.get(url + "/models").json()["models"]
        singles = {
            i: requests.post(url + "/predict?model=tiny", files={"image": b}).json()
            for i, b in enumerate(images)
        }

        def call(i: int) -> tuple[int, dict]:
            r = requests.post(url + "/predict?model=tiny", files={"image": images[i % 6]})
            return r.status_code, r.json()

        with cf.ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(call, range(32 * 4)))
        text = requests.get(url + "/metrics", timeout=30).text
    assert [code for code, _ in answers] == [200] * len(answers)
    assert all("predictions" in s for s in singles.values()), singles
    for i, (_, body) in enumerate(answers):  # each request gets its own image's answer
        assert body["predictions"][0]["index"] == singles[i % 6]["predictions"][0]["index"]
        assert body["predictions"][0]["score"] == pytest.approx(
            singles[i % 6]["predictions"][0]["score"], abs=1e-5
        )
    sizes = {
        s.name: s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name.startswith("handserve_batch_size_") and s.labels.get("model") == "tiny"
    }
    images_run = len(answers) + len(singles) + 1
    assert sizes["handserve_batch_size_sum"] == images_run
    assert sizes["handserve_batch_size_count"] < images_run  # batches of more than one image
    assert got.status_code == 200
    assert {m["runtime"] for m in models} == {"savedmodel"}
    a = {p["index"]: p["score"] for p in want.json()["predictions"]}
    b = {p["index"]: p["score"] for p in got.json()["predictions"]}
    assert a.keys() == b.keys()
    for i in a:
        assert abs(a[i] - b[i]) < 1e-5
