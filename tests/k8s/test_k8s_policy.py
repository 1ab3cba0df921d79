"""Policy scan: checkov finds nothing in what the k8s/ builds render, except what k8s/.checkov.yaml
skips with its reason.

Run: ``pytest tests/k8s/test_k8s_policy.py``. checkov pins many packages that clash with the
project's, so it lives in its own virtual environment: ``scripts/install-test-tools.sh`` makes
``.cache/venv-scan`` with it; ``HANDSERVE_CHECKOV`` or a ``checkov`` on PATH also work. Without
it (or without kubectl to render) the tests skip with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s.kube import BUILDS, K8S, REPO, needs_kubectl, render


def _checkov() -> str | None:
    for candidate in (
        os.environ.get("HANDSERVE_CHECKOV"),
        str(REPO / ".cache/venv-scan/bin/checkov"),
        shutil.which("checkov"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


CHECKOV = _checkov()
pytestmark = [
    needs_kubectl,
    pytest.mark.skipif(
        CHECKOV is None, reason="checkov is not installed: scripts/install-test-tools.sh"
    ),
]


def _scan(folder: Path) -> dict[str, Any]:
    assert CHECKOV is not None
    out = subprocess.run(
        [CHECKOV, "-d", str(folder), "--config-file", str(K8S / ".checkov.yaml"), "-o", "json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.stdout.strip(), out.stderr[-3000:]
    report = json.loads(out.stdout)
    (kubernetes,) = [r for r in (report if isinstance(report, list) else [report])]
    assert kubernetes["check_type"] == "kubernetes"
    return dict(kubernetes)


def _write(folder: Path, name: str, resources: list[dict[str, Any]]) -> None:
    folder.mkdir(exist_ok=True)
    (folder / f"{name.replace('/', '-')}.yaml").write_text(yaml.safe_dump_all(resources))


def test_checkov_passes_every_build(tmp_path: Path) -> None:
    for name in BUILDS:
        _write(tmp_path, name, render(name))
    report = _scan(tmp_path)
    failed = [
        f"{c['check_id']} {c['check_name']}: {c['resource']} ({c['file_path']})"
        for c in report["results"]["failed_checks"]
    ]
    assert not failed, "\n".join(failed)
    summary = report["summary"]
    assert summary["parsing_errors"] == 0
    assert summary["resource_count"] >= 7 * len(BUILDS) - 10  # every build was read
    assert summary["passed"] > 100


def test_checkov_would_catch_what_issue_9_found(tmp_path: Path) -> None:
    """Guards the scan above: the old `latest` tag and a root UID fail it."""
    resources = render("overlays/cpu")
    for resource in resources:
        if resource["kind"] == "Deployment":
            spec = resource["spec"]["template"]["spec"]
            spec["containers"][0]["image"] = "registry.example.com/handserve:latest"
            spec["securityContext"]["runAsUser"] = 0
    _write(tmp_path, "broken", resources)
    failed = {c["check_id"] for c in _scan(tmp_path)["results"]["failed_checks"]}
    assert "CKV_K8S_14" in failed  # "Image Tag should be fixed - not latest or blank"
    assert "CKV_K8S_40" in failed  # "Containers should run as a high UID"
