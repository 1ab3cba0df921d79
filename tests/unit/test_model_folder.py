"""The model version folder has one owner (handserve/artifacts.py): the names of its files and
formats are written there only, every other module reads the format table, the import graph has
no cycle, and publishing is safe for several writers and readable by other users.
"""

from __future__ import annotations

import ast
import os
import random
import stat
import threading
import time
from pathlib import Path
from typing import get_args

import pytest
import yaml

from handserve import artifacts, hand_features, runtimes
from handserve.artifacts import DEFAULT_FORMAT, FORMATS, ArtifactError
from service.config import RuntimeChoice
from tests.conftest import REPO
from tests.staging import staging

#: The project's own code (tests and examples are not: examples are stand-alone for app authors).
PACKAGES = ("handserve", "handserve_cli", "training", "service", "benchmarks")
OWNER = REPO / "handserve" / "artifacts.py"


def project_modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def test_format_keys_and_file_names_are_written_only_in_the_owner() -> None:
    names = {
        *FORMATS,
        *(f.path for f in FORMATS.values()),
        artifacts.MANIFEST,
        artifacts.KERAS_MODEL,
        artifacts.SAMPLES,
    }
    found = []
    for module, path in project_modules().items():
        if path == OWNER:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r} ({module})")
    assert found == [], "import these from handserve.artifacts:\n" + "\n".join(found)


def _imports(path: Path, module: str, known: set[str]) -> set[str]:
    """Project modules ``module`` imports, at any depth of its code (function bodies too)."""
    out = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per extra dot
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(p for p in [*parts, base] if p)
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != module:
                out.add(target)
    return out


def test_the_import_graph_has_no_cycle() -> None:
    modules = project_modules()
    graph = {m: _imports(p, m, set(modules)) for m, p in modules.items()}
    # a package's __init__ is imported with its submodules: an edge to it is not a cycle back
    graph = {m: {t for t in targets if not m.startswith(t + ".")} for m, targets in graph.items()}
    assert "handserve.artifacts" in graph["service.registry"]  # the scan does see imports
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == [], "import cycles:\n" + "\n".join(cycles)


def test_every_list_of_formats_and_runtimes_is_the_table() -> None:
    from training import export, litert

    assert set(get_args(RuntimeChoice)) == {"auto", *DEFAULT_FORMAT}
    assert set(runtimes.RUNTIMES) == set(DEFAULT_FORMAT)
    assert {f.runtime for f in FORMATS.values()} == set(DEFAULT_FORMAT)
    assert export.FORMAT_CHOICES == {
        "fp32": "tflite_fp32",
        "fp16": "tflite_fp16",
        "int8": "tflite_int8",
    }
    assert set(export.REQUIRED_FORMATS) == {"saved_model", "tflite_fp32"}
    assert [f.key for f in litert.TFLITE_FORMATS] == ["tflite_fp32", "tflite_fp16", "tflite_int8"]
    assert artifacts.served_format("litert").path == "model.tflite"
    assert artifacts.served_format("litert", "model_int8.tflite").precision == "int8"
    assert artifacts.served_format("savedmodel").main_file == "saved_model/saved_model.pb"
    with pytest.raises(ValueError, match="unknown runtime 'tpu'"):
        artifacts.served_format("tpu")


@pytest.mark.parametrize("bentofile", ["bentofile.yaml", "bentofile-gpu.yaml"])
def test_each_bentofile_packs_what_its_runtime_serves(bentofile: str) -> None:
    spec = yaml.safe_load((REPO / bentofile).read_text())
    runtime = {e["name"]: e["value"] for e in spec["envs"]}["HANDSERVE_RUNTIME"]
    served = artifacts.served_format(runtime)
    pattern = f"models/*/*/{served.path}" + ("/**" if served.kind == "saved_model" else "")
    packed = {p for p in spec["include"] if p.startswith("models/*/")}
    # and a hand-feature head's embedder copy, which its features need on any runtime
    embedder = f"models/*/*/{hand_features.EMBEDDER_FILE}"
    assert packed == {f"models/*/*/{artifacts.MANIFEST}", pattern, embedder}


# ---------------------------------------------------------------------------------- publishing


def _export_one(models: Path, name: str, results: list[int], errors: list[BaseException]) -> None:
    try:
        with artifacts.staging_version(models, name) as (tmp, version):
            (tmp / "weights.bin").write_bytes(os.urandom(64))
            time.sleep(random.uniform(0, 0.02))  # let the writers overlap
            artifacts.publish(tmp, models, name, version)
            results.append(version)
    except BaseException as exc:
        errors.append(exc)


def test_concurrent_writers_of_one_name_all_publish_under_distinct_versions(tmp_path: Path) -> None:
    results: list[int] = []
    errors: list[BaseException] = []
    writers = [
        threading.Thread(target=_export_one, args=(tmp_path, "digits", results, errors))
        for _ in range(12)
    ]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    assert errors == []
    assert sorted(results) == list(range(1, 13))
    assert artifacts.list_versions(tmp_path, "digits") == list(range(1, 13))
    assert [p.name for p in (tmp_path / "digits").iterdir() if p.name.startswith(".")] == []


def test_a_reserved_number_is_skipped_and_a_failed_export_frees_nothing_else(
    tmp_path: Path,
) -> None:
    (tmp_path / "digits" / ".staging-1").mkdir(parents=True)  # an export under way (or killed)
    with artifacts.staging_version(tmp_path, "digits") as (tmp, version):
        assert version == 2 and tmp.name == ".staging-2"
        assert artifacts.list_versions(tmp_path, "digits") == []  # not a version
    assert not tmp.exists()  # nothing published, the reservation released
    with pytest.raises(RuntimeError), artifacts.staging_version(tmp_path, "digits") as (tmp, _):
        raise RuntimeError("conversion failed")
    assert not tmp.exists()
    assert artifacts.next_version(tmp_path, "digits") == 2


def test_a_published_version_is_readable_by_every_user_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o077)
    try:
        with artifacts.staging_version(tmp_path, "digits") as (tmp, version):
            (tmp / "saved_model" / "variables").mkdir(parents=True)
            (tmp / "saved_model" / "variables" / "v.index").write_bytes(b"x")
            (tmp / "model.tflite").write_bytes(b"y")
            target = artifacts.publish(tmp, tmp_path, "digits", version)
    finally:
        os.umask(previous)
    modes = {
        str(p.relative_to(target)): stat.S_IMODE(p.stat().st_mode)
        for p in [target, *target.rglob("*")]
    }
    assert modes == {
        ".": 0o755,
        "saved_model": 0o755,
        "saved_model/variables": 0o755,
        "saved_model/variables/v.index": 0o644,
        "model.tflite": 0o644,
    }


def test_publishing_onto_a_taken_number_is_refused(tmp_path: Path) -> None:
    (tmp_path / "digits" / "1").mkdir(parents=True)
    (tmp_path / "digits" / "1" / "x").write_text("published")
    with (
        staging(tmp_path, "digits") as tmp,
        pytest.raises(ArtifactError, match="immutable"),
    ):
        artifacts.publish(tmp, tmp_path, "digits", 1)
    assert (tmp_path / "digits" / "1" / "x").read_text() == "published"
