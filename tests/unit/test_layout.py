"""Tests where they belong: nothing outside ``tests/`` imports from it, and the k8s tests are in one
folder.

Benchmarks and examples run where no test suite is installed (a Bento, the tools image, a user's
checkout without the dev extras); code they need lives in the project (the server helper in
``service/local_server.py``), not in ``tests/``.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

from tests.conftest import REPO

#: Folders that hold no code of the project (environments, caches, outputs).
SKIPPED = {".git", ".venv", ".cache", "models", "runs", "node_modules", "__pycache__"}


def python_files() -> list[Path]:
    """Every ``.py`` file of the checkout outside ``tests/`` and the skipped folders."""
    out = []
    for dirpath, dirnames, filenames in os.walk(REPO):
        here = Path(dirpath)
        dirnames[:] = [
            d
            for d in dirnames
            if d not in SKIPPED
            and not d.endswith(".egg-info")
            and not (here == REPO and d == "tests")
        ]
        out += [here / name for name in filenames if name.endswith(".py")]
    return sorted(out)


def imports_of(source: str, package: str = "tests") -> list[int]:
    """Line numbers of the imports of ``package`` (or a module in it) in ``source``, at any
    depth of the code (function bodies too)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        if any(name == package or name.startswith(package + ".") for name in names):
            lines.append(node.lineno)
    return lines


def test_the_scan_finds_imports_of() -> None:
    source = (
        "import os\n"
        "from tests.conftest import REPO\n"
        "import tests.service.helpers as h\n"
        "def f():\n"
        "    import tests\n"
        "from service.tests_like import x\n"
        "import testsuite\n"
    )
    assert imports_of(source) == [2, 3, 5]


def test_no_module_outside_tests_imports_from_tests() -> None:
    files = python_files()
    assert REPO / "benchmarks" / "serve_bench.py" in files  # the scan does see the benchmarks
    assert REPO / "service" / "local_server.py" in files
    found = [
        f"{path.relative_to(REPO)}:{line}"
        for path in files
        for line in imports_of(path.read_text())
    ]
    assert found == [], "move what these need out of tests/ (e.g. service/local_server.py):\n" + (
        "\n".join(found)
    )


def test_the_k8s_helper_is_used_only_by_the_k8s_tests() -> None:
    """k8s/ is rendered through tests/k8s/kube.py; a test that renders it belongs beside it."""
    users = {
        path.relative_to(REPO / "tests")
        for path in (REPO / "tests").rglob("*.py")
        if imports_of(path.read_text(), "tests.k8s")
    }
    assert Path("k8s/test_k8s_manifests.py") in users  # the scan does see them
    assert {p for p in users if p.parts[0] != "k8s"} == set(), "move these to tests/k8s"
