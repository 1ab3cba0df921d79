"""Render k8s/ with the real kustomize (``kubectl kustomize``) and look things up in the result.

Shared by the tests of k8s/, which all live in tests/k8s. No cluster is needed: ``kubectl
kustomize`` only builds. Without kubectl the tests that render skip with a reason (scripts/
install-test-tools.sh installs it from Debian).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

K8S = REPO / "k8s"
KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl (kustomize) is not installed: scripts/install-test-tools.sh"
)

#: What a user applies (`kubectl apply -k k8s/NAME`): every one pins its images in k8s/release.
SERVING = ["overlays/cpu", "overlays/cpu-keda", "overlays/gpu", "overlays/models-volume"]
JOBS = ["training", "training-gpu", "load"]
BUILDS = SERVING + JOBS
#: Kustomizations only included by the builds above (base has no image pin).
INCLUDED = ["base", "namespace", "storage"]
POD_LABELS = {"app.kubernetes.io/name": "handserve", "app.kubernetes.io/component": "api"}
NAMESPACE = "handserve"
#: Kinds whose schema kubernetes-validate does not ship (CRDs); checked field by field.
CRD_KINDS = {"ScaledObject", "ServiceMonitor"}
CLUSTER_SCOPED = {"Namespace"}


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """The resources ``kubectl apply -k DIRECTORY`` would send (kubectl kustomize's output)."""
    assert KUBECTL is not None
    out = subprocess.run(
        [KUBECTL, "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, f"kubectl kustomize {directory}: {out.stderr}"
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@functools.cache
def _render_cached(name: str) -> str:
    return yaml.safe_dump_all(kustomize(K8S / name))


def render(name: str) -> list[dict[str, Any]]:
    """``kustomize`` of ``k8s/NAME``, cached per session; a fresh copy each call."""
    return list(yaml.safe_load_all(_render_cached(name)))


def compose(tmp_path: Path, resources: list[str], components: list[str]) -> list[dict[str, Any]]:
    """Render a kustomization written in ``tmp_path`` from k8s/ folders, as a user's would be."""
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": NAMESPACE,
        # kustomize takes relative paths only; folders outside the root are allowed
        "resources": [os.path.relpath(K8S / r, tmp_path) for r in resources],
        "components": [os.path.relpath(K8S / c, tmp_path) for c in components],
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return kustomize(tmp_path)


def of_kind(resources: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in resources if r["kind"] == kind]


def one(resources: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = of_kind(resources, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_spec(resource: dict[str, Any]) -> dict[str, Any] | None:
    """The pod template's spec of a Deployment or Job, else None."""
    if resource["kind"] in {"Deployment", "Job"}:
        spec: dict[str, Any] = resource["spec"]["template"]["spec"]
        return spec
    return None


def env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def cpu_cores(quantity: str | int) -> float:
    """A Kubernetes CPU quantity ("2", "500m") in cores."""
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)
