"""No dead code: every function of the project's packages is called from outside ``tests/``.

A function only tests call keeps a second way of doing something alive (``artifacts.staging``
beside ``staging_version``) or tests a path nothing takes (``RunFolder.read_dataset``): what a
test needs it keeps in ``tests/``.
"""

from __future__ import annotations

import ast
import re

from tests.conftest import REPO
from tests.unit.test_layout import python_files

#: The packages whose functions must have a caller. service/ joins when its test-only helpers
#: are gone (issue 35: ``Engine.dispatched_versions``).
SCANNED = ("handserve", "handserve_cli", "training")
#: Methods a library calls by name (Keras callbacks, pydantic-settings sources).
HOOKS = {"on_epoch_begin", "on_epoch_end", "settings_customise_sources", "_load_env_vars"}
#: Files other than Python that call project code (shell scripts, make, CI, container builds).
OTHER_CALLERS = ("*.sh", "Makefile", "Dockerfile*", "*.yaml", "*.toml")
#: In text (a script, ``python -c`` code): a call ``name(``, an attribute ``module.name`` or an
#: entry point ``package:name``; not a word of a comment or a message.
CALLED = re.compile(r"(?<=\w[.:])\w+|\w+(?=\()")


def _registered(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Decorated so that a library calls it (pydantic validators): it has no caller by name."""
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
        if name.endswith("validator"):
            return True
    return False


def definitions() -> dict[str, list[str]]:
    """Function and method names defined in :data:`SCANNED`, with where."""
    out: dict[str, list[str]] = {}
    for path in python_files():
        rel = path.relative_to(REPO)
        if rel.parts[0] not in SCANNED or "third_party" in rel.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                if node.name.startswith("__") or node.name in HOOKS or _registered(node):
                    continue
                out.setdefault(node.name, []).append(f"{rel}:{node.lineno}")
    return out


def names_used_outside_tests() -> set[str]:
    """Every name read, attribute taken or name imported outside ``tests/``, and every
    :data:`CALLED` name in its strings (not docstrings), scripts and build files."""
    used: set[str] = set()
    for path in python_files():
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                used.add(node.id)
            elif isinstance(node, ast.Attribute):
                used.add(node.attr)
            elif isinstance(node, ast.alias):
                used.add(node.name.rsplit(".", 1)[-1])
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                if id(node) in docstrings:
                    continue
                used.update(CALLED.findall(node.value))
                if node.value.isidentifier():  # getattr(module, "name"), __all__
                    used.add(node.value)
    for pattern in OTHER_CALLERS:
        for path in REPO.rglob(pattern):
            if not {".venv", "node_modules", ".git", "tests"} & set(path.relative_to(REPO).parts):
                used.update(CALLED.findall(path.read_text(errors="replace")))
    return used


def test_the_scan_sees_callers_in_code_and_scripts() -> None:
    defined, used = definitions(), names_used_outside_tests()
    assert "staging_version" in defined and "staging_version" in used  # export_run calls it
    assert "extract_from_wheel" in used  # only scripts/fetch-hand-models.sh calls it
    assert "_fractions_fit" not in defined  # a validator pydantic calls
    assert "staging" not in used  # ".staging-" (a folder name) and prose are no callers


def test_every_function_has_a_caller_outside_tests() -> None:
    used = names_used_outside_tests()
    dead = sorted(
        f"{where}: {name}"
        for name, places in definitions().items()
        if name not in used
        for where in places
    )
    assert not dead, "remove these, or move them into tests/ if tests need them:\n" + "\n".join(
        dead
    )
