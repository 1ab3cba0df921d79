"""``make test-fast``: every test that needs no trained model, server, browser, container or
package index, and none that does.

Tests are marked by module (``pytestmark``) and, so that none is missed, by the fixtures they
request (``FIXTURE_MARKERS`` in tests/conftest.py: a test asking for ``tiny_export`` at any
depth trains and exports a model, so it is ``slow`` wherever it lives).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

from tests.conftest import FIXTURE_MARKERS, LONG_TESTS, REPO


def fast_expression() -> str:
    (expression,) = re.findall(r"^FAST := (.+)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    return expression


def registered_markers() -> set[str]:
    pytest_options = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]
    return {line.split(":")[0] for line in pytest_options["ini_options"]["markers"]}


def test_every_marker_is_either_left_out_of_the_fast_loop_or_harmless() -> None:
    left_out = set(re.findall(r"not (\w+)", fast_expression()))
    assert left_out == {"slow", "server", "browser", "prometheus", "podman", "network"}
    assert set(FIXTURE_MARKERS.values()) - left_out == {"shared_data"}
    # shared_data: skips without ../shared; long: a warning, not a need (a new marker must be
    # placed on one side of the line).
    assert registered_markers() - left_out == {"shared_data", "long"}


def test_a_test_that_requests_the_trained_export_is_not_fast() -> None:
    """tests/export/test_registry.py has no module marker: its three tests that request
    ``tiny_export`` are left out by the fixture hook, its one that does not stays in."""
    collect = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
    proc = subprocess.run(
        [*collect, "-m", fast_expression(), "tests/export/test_registry.py"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    collected = [line for line in proc.stdout.splitlines() if "::" in line]
    assert collected == ["tests/export/test_registry.py::test_empty_models_folder"]


def test_every_long_test_exists() -> None:
    """A renamed or removed test must leave :data:`LONG_TESTS` too (read from the source, not
    collected: collecting those modules costs a TensorFlow import)."""
    missing = []
    for nodeid in sorted(LONG_TESTS):
        path, name = nodeid.split("::")
        if f"def {name}(" not in (REPO / path).read_text():
            missing.append(nodeid)
    assert not missing, "no such test: " + ", ".join(missing)
