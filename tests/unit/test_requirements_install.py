"""Every requirements file installs with plain pip on every Python the project supports.

uv ignores an upper bound in a package's Requires-Python and pip does not: the lock once held
backports-strenum 1.3.1 (Python < 3.11), so ``pip install -r requirements/bento-cpu.txt`` (what a
Bento's image runs) failed on a fresh Python 3.11 with "No matching distribution found". pip
resolves each file here for each supported Python (``--python-version``; only 3.11 is installed,
and pip evaluates environment markers for the running one) without installing anything.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from tests.lockfile import REPO, REQUIREMENTS

#: Not installed anywhere: the one wheel scripts/fetch-hand-models.sh downloads and unpacks.
DOWNLOAD_ONLY = {"hand-models.txt"}
INDEX = "https://pypi.org/simple/"


def supported_pythons() -> list[str]:
    """``3.X`` for each minor version ``requires-python`` in pyproject.toml allows."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    allowed = SpecifierSet(project["requires-python"])
    return [f"3.{minor}" for minor in range(8, 30) if f"3.{minor}.0" in allowed]


def target_version(python: str) -> str:
    """What ``--python-version`` says: this interpreter's full version for its own minor.

    pip evaluates markers for the running interpreter, and a file may choose by patch level
    (checkov.txt: ``soupsieve==2.10 ; python_full_version < '3.11.5'``, 4.1.4 above it, which
    needs 3.11.5): checking Requires-Python against 3.11.0 there would fail a file that is right.
    """
    running = platform.python_version()
    return running if running.startswith(python + ".") else python


def requirement_files() -> list[str]:
    return sorted(p.name for p in REQUIREMENTS.glob("*.txt") if p.name not in DOWNLOAD_ONLY)


@pytest.fixture(scope="module")
def index() -> str:
    try:
        urllib.request.urlopen(INDEX + "pip/", timeout=15).close()
    except OSError as exc:
        pytest.skip(f"the package index {INDEX} is unreachable: {exc}")
    return INDEX


def test_the_matrix_is_the_projects() -> None:
    assert supported_pythons() == ["3.11", "3.12", "3.13"]
    assert {"bento-cpu.txt", "bento-gpu.txt", "tools.txt", "tools-gpu.txt"} <= set(
        requirement_files()
    )


def pip_resolves(name: str, python: str, index: str, target: Path) -> str | None:
    """``pip install -r requirements/NAME`` for Python ``python``, resolved but not installed:
    None when it would install, else pip's errors."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--isolated",  # no pip.conf, PIP_* variables or constraints of this machine
        "--index-url",
        index,
        "--dry-run",
        "--quiet",
        "--only-binary=:all:",
        "--python-version",
        target_version(python),
        "--target",  # pip 23 takes --python-version only with it; nothing is written there
        str(target),
        "--ignore-installed",
        "-r",
        str(REQUIREMENTS / name),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if proc.returncode == 0:
        return None
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")]
    return "\n".join(errors or proc.stderr.splitlines()[-20:])


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.timeout(900)
@pytest.mark.parametrize("python", supported_pythons())
@pytest.mark.parametrize("name", requirement_files())
def test_pip_installs_the_file(name: str, python: str, index: str, tmp_path: Path) -> None:
    """10-90 s each here (pip's resolver, on the CPU: running them side by side gained nothing
    on two cores)."""
    errors = pip_resolves(name, python, index, tmp_path / "target")
    assert errors is None, f"requirements/{name} on Python {python}:\n{errors}"
