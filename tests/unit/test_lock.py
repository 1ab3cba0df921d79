"""One lock for every install: uv.lock holds the exact versions; .venv, the requirement files
the Bentos and the tools image install, and the checkov side environment all agree with it.

What this would have caught: pyproject.toml allowing bentoml 1.4.40 while the bentofiles pinned
1.4.39, so that a fresh clone built a Bento that could not install. The built Bento's own
``requirements.txt`` is compared with the lock in tests/service/test_packaging.py.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from packaging.utils import canonicalize_name

from tests.lockfile import DEV_EXTRAS, REPO, REQUIREMENTS, export, locked_versions, pins, uv

#: Installed in .venv but not by the lock: pip is the installer `python -m venv` seeds, which
#: bootstraps uv (Makefile); the project itself is the editable install of this checkout.
NOT_LOCKED = {"pip", "handserve"}
#: Each deployment target's file in requirements/ (scripts/export-requirements.sh).
TARGETS = ("bento-cpu.txt", "bento-gpu.txt", "tools.txt", "tools-gpu.txt")


def test_the_environment_running_the_tests_is_exactly_the_lock() -> None:
    installed = {
        canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()
    }
    flags = [f for extra in DEV_EXTRAS for f in ("--extra", extra)]
    locked = pins(export(*flags), source="uv export " + " ".join(flags))
    assert locked, "the lock exported no package"
    differs = {
        name: (f"locked {version}", f"installed {installed.get(name, 'nothing')}")
        for name, version in locked.items()
        if installed.get(name) != version
    }
    assert not differs, f".venv differs from uv.lock (`make test` re-syncs it): {differs}"
    extra = set(installed) - set(locked) - NOT_LOCKED
    assert not extra, f".venv holds packages the lock does not: {sorted(extra)}"


def test_the_requirement_files_are_exported_from_the_lock_as_it_is(tmp_path: Path) -> None:
    """A lock changed without `make requirements` (or a file edited by hand) fails here."""
    env = {**os.environ, "PATH": f"{Path(uv()).parent}:{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", str(REPO / "scripts/export-requirements.sh"), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(TARGETS)
    for name in TARGETS:
        committed = (REQUIREMENTS / name).read_text()
        assert committed == (tmp_path / name).read_text(), f"requirements/{name} is stale"


#: Side environments with a resolution of their own (`make lock` compiles requirements/NAME.in).
SIDE = ("checkov.txt", "pytriton.txt")


@pytest.mark.parametrize("name", [*TARGETS, *SIDE])
def test_every_line_of_a_requirement_file_is_an_exact_pin(name: str) -> None:
    found = pins((REQUIREMENTS / name).read_text(), source=f"requirements/{name}")
    assert found, name
    if name not in SIDE:
        locked = locked_versions()
        assert {n: v for n, v in found.items() if v not in locked.get(n, set())} == {}


def test_each_target_installs_its_exported_file() -> None:
    for bentofile, target in (("bentofile.yaml", "bento-cpu"), ("bentofile-gpu.yaml", "bento-gpu")):
        python = yaml.safe_load((REPO / bentofile).read_text())["python"]
        assert python["requirements_txt"] == f"requirements/{target}.txt", bentofile
        assert "packages" not in python, f"{bentofile}: versions come from the lock only"
    dockerfile = (REPO / "k8s/training/Dockerfile").read_text()
    (default,) = re.findall(r"^ARG REQUIREMENTS=(\S+)$", dockerfile, re.M)
    assert default == "requirements/tools.txt"
    assert "--build-arg REQUIREMENTS=requirements/tools-gpu.txt" in dockerfile
    assert 'pip install --no-deps -r "$REQUIREMENTS"' in dockerfile
    tools = pins((REQUIREMENTS / "tools.txt").read_text())
    gpu = pins((REQUIREMENTS / "tools-gpu.txt").read_text())
    assert {"tensorflow", "keras", "locust"} <= set(tools)
    assert {k: v for k, v in tools.items() if gpu.get(k) != v} == {}
    assert any(name.startswith("nvidia-") for name in gpu)
    cpu = pins((REQUIREMENTS / "bento-cpu.txt").read_text())
    assert "tensorflow" not in cpu and "ai-edge-litert" in cpu


def test_the_makefile_bootstraps_the_locked_uv() -> None:
    (version,) = re.findall(r"^UV_VERSION := (\S+)$", (REPO / "Makefile").read_text(), re.M)
    assert locked_versions()["uv"] == {version}
    assert version in subprocess.run([uv(), "--version"], capture_output=True, text=True).stdout


def test_the_checkov_environment_is_its_pinned_file() -> None:
    python = REPO / ".cache/venv-scan/bin/python"
    if not python.exists():
        pytest.skip("no .cache/venv-scan: scripts/install-test-tools.sh could not install checkov")
    listed = subprocess.run(
        [uv(), "pip", "freeze", "--python", str(python)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    want = pins((REQUIREMENTS / "checkov.txt").read_text())
    have = pins(listed.stdout, source="the checkov venv")
    assert have == want
