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
#: A benchmark's side environment that cannot exist on every supported Python: PyTriton needs
#: numpy < 2, which has no wheel for Python 3.13: the peer benchmark runs on 3.11 or 3.12.
PYTHONS_OF = {"pytriton.txt": ["3.11", "3.12"]}
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


def pins(name: str) -> set[str]:
    """The ``package==version ; marker`` lines of a requirements file, normalised."""
    lines = (REQUIREMENTS / name).read_text().splitlines()
    return {
        " ".join(line.rstrip("\\").split())
        for line in lines
        if "==" in line and not line.lstrip().startswith(("#", "-"))
    }


def requirement_files() -> list[str]:
    return sorted(p.name for p in REQUIREMENTS.glob("*.txt") if p.name not in DOWNLOAD_ONLY)


def files_to_check() -> list[str]:
    """Every requirements file whose pins are not all in another one (``bento-cpu.txt`` and
    ``tools.txt`` are inside ``tools-gpu.txt``): checking the larger file checks them too."""
    files = requirement_files()
    return [
        name
        for name in files
        if not any(other != name and pins(name) < pins(other) for other in files)
    ]


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
    # every file is checked, itself or inside a larger one
    checked = files_to_check()
    for name in requirement_files():
        assert any(pins(name) <= pins(other) for other in checked), name


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.parametrize(
    ("name", "python"),
    [
        (name, python)
        for name in files_to_check()
        for python in supported_pythons()
        if python in PYTHONS_OF.get(name, [python])
    ],
)
def test_pip_installs_the_file(name: str, python: str, index: str, tmp_path: Path) -> None:
    """``pip install -r FILE`` for Python ``python``, checked but not installed (10-30 s).

    ``--no-deps``: each file is a complete export of the lock (every dependency pinned), so
    what can fail is a pin with no wheel pip accepts for that Python (the Requires-Python of
    backports-strenum 1.3.1 did); re-resolving the dependencies pip would take from the same
    pins cost a minute a file and checks nothing more."""
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
        str(tmp_path / "target"),
        "--ignore-installed",
        "--no-deps",
        "-r",
        str(REQUIREMENTS / name),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")]
    assert proc.returncode == 0, f"requirements/{name} on Python {python}:\n" + "\n".join(
        errors or proc.stderr.splitlines()[-20:]
    )
