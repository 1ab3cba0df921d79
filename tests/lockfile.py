"""Reading the lock and the requirement files exported from it, for the tests that hold the
environments to it (tests/unit/test_lock.py, tests/service/test_packaging.py).

A requirement file here is what ``uv export`` writes (or BentoML copies into a Bento): one
``name==version ; marker`` per package, comments and blank lines between. Markers are evaluated
for this interpreter, as pip would evaluate them when installing the file here.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO

LOCK = REPO / "uv.lock"
REQUIREMENTS = REPO / "requirements"
#: `make` installs and syncs .venv with these extras (Makefile: SYNC).
DEV_EXTRAS = ("dev", "bench")


def pins(text: str, *, source: str = "requirements") -> dict[str, str]:
    """``{canonical name: version}`` of every line that applies here.

    Raises:
        AssertionError: a line is not an exact ``==`` pin, or one package is pinned twice to
            different versions (naming ``source`` and the line).
    """
    found: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate():
            continue
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", (
            f"{source}:{number}: {raw!r} is not an exact pin"
        )
        name, version = canonicalize_name(req.name), specs[0].version
        assert found.get(name, version) == version, (
            f"{source}:{number}: {name} pinned to {version} and to {found[name]}"
        )
        found[name] = version
    return found


def locked_versions() -> dict[str, set[str]]:
    """Every version of every package in ``uv.lock`` (a universal lock may hold several)."""
    data = tomllib.loads(LOCK.read_text())
    versions: dict[str, set[str]] = {}
    for package in data["package"]:
        if "version" in package:
            versions.setdefault(canonicalize_name(package["name"]), set()).add(package["version"])
    return versions


def uv() -> str:
    """The uv that .venv holds (the Makefile bootstraps it; the lock pins it)."""
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    assert found, "uv is not installed: run `make test`, which installs it into .venv"
    return found


def export(*args: str) -> str:
    """``uv export`` of the lock as it is (``--frozen``: never re-resolved), as text."""
    done = subprocess.run(
        [uv(), "export", "--frozen", "--no-hashes", "--no-header", "--no-emit-project", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout
