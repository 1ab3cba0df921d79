"""A five-second headless locust run of load_tests/locustfile.py against the real server.

Run: ``pytest -m server tests/service/test_locustfile_server.py``. Uses the session's ``server``
fixture (tests/service/conftest.py), so no extra server starts. Locust runs in a subprocess:
importing it here would monkey-patch this pytest process with gevent. The offline checks of the
locustfile (payloads, request building, response checks) are in tests/unit/test_locustfile.py.
"""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.server

if importlib.util.find_spec("locust") is None:
    pytest.skip("locust is not installed", allow_module_level=True)

LOCUSTFILE = Path(__file__).resolve().parents[2] / "load_tests" / "locustfile.py"


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
