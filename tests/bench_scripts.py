"""Running a script of ``benchmarks/`` as a user runs it, for the smoke tests
(tests/export/test_benchmark_scripts.py, tests/service/test_benchmark_scripts.py)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def run_benchmark(script: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python benchmarks/SCRIPT ARGS`` from the checkout; a traceback fails the test."""
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    assert "Traceback" not in done.stderr, done.stderr[-4000:]
    return done
