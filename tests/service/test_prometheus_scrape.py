"""A real Prometheus scrapes the real server's /metrics and sees the predictions we sent.

Run: ``pytest -m prometheus tests/service/test_prometheus_scrape.py``. Needs the ``prometheus``
binary (``apt-get install prometheus``, done by ``scripts/install-test-tools.sh``); skips without.
Checks what a dashboard relies on: the target is up, the handserve_* names survive a real scrape
(not just our own text parser), and counter values add up.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from PIL import Image, ImageDraw
from prometheus_client.parser import text_string_to_metric_families

from service.local_server import free_port

pytestmark = [pytest.mark.prometheus, pytest.mark.server]

JOB = "handserve"
N_PREDICTIONS = 5
WAIT_S = 60.0  # scrape interval is 1 s; generous for a loaded 2-core machine

# At module level, so a machine without Prometheus skips before the session server starts.
PROMETHEUS = shutil.which(os.environ.get("HANDSERVE_PROMETHEUS", "prometheus")) or ""
if not PROMETHEUS:
    pytest.skip(
        "the prometheus binary is absent (apt-get install prometheus, or make test)",
        allow_module_level=True,
    )


def _base_url(server: Any) -> str:
    for attr in ("base_url", "url"):
        if hasattr(server, attr):
            return str(getattr(server, attr)).rstrip("/")
    return str(server).rstrip("/")


def _predictions_total(base_url: str) -> float:
    """Sum of handserve_predictions_total over all label sets, read from the server directly."""
    text = requests.get(f"{base_url}/metrics", timeout=30).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "handserve_predictions_total"
    )


def _digit_png(height: int, width: int) -> bytes:
    img = Image.new("L", (width, height), 0)
    ImageDraw.Draw(img).line(
        [(width * 0.3, height * 0.2), (width * 0.5, height * 0.2), (width * 0.5, height * 0.8)],
        fill=255,
        width=max(1, width // 8),
    )
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def prometheus(server: Any, tmp_path: Path) -> Iterator[str]:
    """A Prometheus scraping the server every second; yields its base URL."""
    binary = PROMETHEUS
    target = urlsplit(_base_url(server)).netloc
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        f"  - job_name: {JOB}\n"
        "    metrics_path: /metrics\n"
        "    scrape_timeout: 1s\n"
        "    static_configs:\n"
        f"      - targets: ['{target}']\n"
    )
    port = free_port()
    log_path = tmp_path / "prometheus.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                if requests.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prometheus not ready after {WAIT_S:.0f} s:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _query(prom_url: str, promql: str) -> list[dict[str, Any]]:
    resp = requests.get(f"{prom_url}/api/v1/query", params={"query": promql}, timeout=5)
    resp.raise_for_status()
    body = resp.json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def _wait_for(prom_url: str, promql: str, want: float) -> list[dict[str, Any]]:
    """Poll an instant query until its single value equals ``want``; fail with the last answer."""
    deadline = time.monotonic() + WAIT_S
    result: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        result = _query(prom_url, promql)
        if len(result) == 1 and float(result[0]["value"][1]) == want:
            return result
        time.sleep(0.5)
    targets = requests.get(f"{prom_url}/api/v1/targets", timeout=5).json()
    pytest.fail(f"{promql} never became {want}; last answer {result}; targets {targets}")


def test_prometheus_scrapes_predictions(server: Any, prometheus: str) -> None:
    base_url = _base_url(server)
    models = requests.get(f"{base_url}/models", timeout=30).json()
    model = (models["models"] if isinstance(models, dict) else models)[0]
    png = _digit_png(int(model["input"]["height"]), int(model["input"]["width"]))

    before = _predictions_total(base_url)
    for i in range(N_PREDICTIONS):
        if i % 2:  # both body styles the API takes
            resp = requests.post(
                f"{base_url}/predict",
                params={"model": model["name"]},
                data=png,
                headers={"Content-Type": "image/png"},
                timeout=60,
            )
        else:
            resp = requests.post(
                f"{base_url}/predict",
                files={"file": ("digit.png", png, "image/png")},
                data={"model": model["name"]},
                timeout=60,
            )
        assert resp.status_code == 200, resp.text
    expected = before + N_PREDICTIONS
    assert _predictions_total(base_url) == expected, "the server's own /metrics disagrees"

    _wait_for(prometheus, f'up{{job="{JOB}"}}', 1.0)
    series = _wait_for(
        prometheus, f'sum(handserve_predictions_total{{job="{JOB}"}})', float(expected)
    )
    assert series[0]["metric"] == {}

    by_model = _query(prometheus, f'sum by (model) (handserve_predictions_total{{job="{JOB}"}})')
    assert {r["metric"].get("model") for r in by_model} >= {model["name"]}
    info = _query(prometheus, f'handserve_model_info{{job="{JOB}",name="{model["name"]}"}}')
    assert info, "handserve_model_info for the served model did not reach Prometheus"
    assert {"version", "runtime", "sha256"} <= set(info[0]["metric"])
