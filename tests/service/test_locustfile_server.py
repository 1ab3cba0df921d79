"""Short headless locust runs of load_tests/locustfile.py against the real server.

Run: ``pytest -m server tests/service/test_locustfile_server.py``. Uses the session's ``server``
fixture (tests/service/conftest.py), so no extra server starts. Locust runs in a subprocess:
importing it here would monkey-patch this pytest process with gevent. Checked here: a clean run,
the thresholds turning into the exit code (latency and error rate, breached and met), the
in-cluster Job's own command line, and that the series KEDA scales on is one the server exports.
The offline checks of the locustfile (payloads, checks, shapes, threshold logic) are in
tests/unit/test_locustfile.py.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.conftest import REPO
from tests.service.helpers import digit_png

pytestmark = pytest.mark.server

if importlib.util.find_spec("locust") is None:
    pytest.skip("locust is not installed", allow_module_level=True)

LOCUSTFILE = REPO / "load_tests" / "locustfile.py"
#: A p95 bound no run misses: the pass/fail tests must not depend on this machine's speed.
GENEROUS_P95_MS = "60000"
PNG = {"Content-Type": "image/png"}


def _base_url(server: Any) -> str:
    for attr in ("base_url", "url"):
        if hasattr(server, attr):
            return str(getattr(server, attr)).rstrip("/")
    return str(server).rstrip("/")


def test_a_short_headless_run_has_no_failures(server: Any, tmp_path: Path) -> None:
    """Five seconds, two users, against the real server: every task ran and nothing failed."""
    prefix = tmp_path / "run"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(LOCUSTFILE),
            "--headless",
            "-u",
            "2",
            "-r",
            "2",
            "-t",
            "5s",
            "--host",
            _base_url(server),
            "--csv",
            str(prefix),
            "--only-summary",
            "--loglevel",
            "WARNING",
            "--max-p95-ms",
            GENEROUS_P95_MS,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    stats_path = Path(f"{prefix}_stats.csv")
    assert stats_path.is_file(), out.stderr[-3000:]
    with stats_path.open() as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    failures = Path(f"{prefix}_failures.csv").read_text()
    total = rows["Aggregated"]
    assert int(total["Failure Count"]) == 0, failures
    assert int(total["Request Count"]) > 0
    for name in ("/predict [multipart]", "/predict [raw]", "/predict_batch"):
        assert int(rows[name]["Request Count"]) > 0, f"{name} never ran in 5 s: {rows}"
    assert out.returncode == 0, out.stderr[-3000:]


def _locust(
    server: Any, tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless"]
    return subprocess.run(
        [*command, "--only-summary", "--host", _base_url(server), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, **(env or {})},
    )


def test_a_p95_over_the_threshold_fails_the_run(server: Any, tmp_path: Path) -> None:
    """No real request answers in a microsecond: the latency gate must trip, exit code 1."""
    out = _locust(server, tmp_path, "-u", "2", "-r", "2", "-t", "3s", "--max-p95-ms", "0.001")
    assert out.returncode == 1, out.stderr[-3000:]
    assert "(--max-p95-ms)" in out.stderr, out.stderr[-3000:]
    assert "(--max-error-pct)" not in out.stderr


def test_an_error_rate_over_the_threshold_fails_the_run(server: Any, tmp_path: Path) -> None:
    """Every request names a model the server lacks (404): 100% errors > 1%, exit code 1."""
    out = _locust(
        server,
        tmp_path,
        *("-u", "2", "-r", "2", "-t", "3s", "--max-p95-ms", GENEROUS_P95_MS),
        env={"HANDSERVE_MODEL": "no-such-model", "LOCUST_MAX_ERROR_PCT": "1"},
    )
    assert out.returncode == 1, out.stderr[-3000:]
    assert "(--max-error-pct)" in out.stderr, out.stderr[-3000:]


def test_the_in_cluster_job_command_runs_and_writes_its_reports(
    server: Any, tmp_path: Path
) -> None:
    """k8s/load/job.yaml's locust arguments, with only host, length, size and bound changed."""
    (job,) = [
        d
        for d in yaml.safe_load_all((REPO / "k8s/load/job.yaml").read_text())
        if d and d["kind"] == "Job"
    ]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["locust"]
    args = list(container["args"])
    overrides = {
        "-f": str(LOCUSTFILE),
        "--host": _base_url(server),
        "--users": "4",
        "--run-time": "4s",
        "--max-p95-ms": GENEROUS_P95_MS,
        "--csv": str(tmp_path / "run"),
        "--html": str(tmp_path / "report.html"),
    }
    for flag, value in overrides.items():
        args[args.index(flag) + 1] = value
    assert args[args.index("--shape") + 1] == "ramp"
    out = subprocess.run(
        [sys.executable, "-m", "locust", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Shape test" in out.stderr  # the ramp shape drove the users
    assert (tmp_path / "report.html").stat().st_size > 0
    assert (tmp_path / "run_stats.csv").is_file()


def test_the_keda_query_names_series_the_server_exports(server: Any) -> None:
    """The ScaledObject's metric and endpoint filter match what /metrics really has."""
    url = _base_url(server)
    png = digit_png()
    assert requests.post(url + "/predict", data=png, headers=PNG, timeout=30).ok
    files = [("files", ("a.png", png, "image/png")), ("files", ("b.png", png, "image/png"))]
    assert requests.post(url + "/predict_batch", files=files, timeout=30).ok
    scaled = yaml.safe_load((REPO / "k8s/components/keda/scaledobject.yaml").read_text())
    (prom,) = [t for t in scaled["spec"]["triggers"] if t["type"] == "prometheus"]
    match = re.fullmatch(r'sum\((\w+)\{.*endpoint=~"([^"]+)"\}\)', prom["metadata"]["query"])
    assert match, prom["metadata"]["query"]
    metric, endpoint_re = match.groups()
    text = requests.get(url + "/metrics", timeout=5).text
    endpoints = set(re.findall(rf'^{metric}\{{[^}}]*endpoint="([^"]+)"', text, re.M))
    predict = {e for e in endpoints if re.fullmatch(endpoint_re, e)}
    assert {"/predict", "/predict_batch"} <= predict, endpoints
    assert "/metrics" not in predict and "/readyz" not in predict
