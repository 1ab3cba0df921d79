"""The Kubernetes manifests in k8s/ are valid and hang together, checked offline.

Run: ``pytest tests/unit/test_k8s_manifests.py``. No cluster and no network: every resource is
validated with ``kubernetes-validate`` against the Kubernetes OpenAPI schemas it ships (strict:
unknown fields fail), and the invariants a cluster would only reveal at run time are asserted:
probes on /livez and /readyz, ports that line up, resources, non-root and read-only root.

Overlays are rendered by a small subset of kustomize written here (``resources``, ``patches``
with strategic merge by container/env/volume name, ``images``): there is no kustomize binary on
these machines. It refuses any other kustomization key, so a new feature in an overlay fails
loudly here instead of being silently ignored.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml

kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")

from service.config import Runtime, ServiceConfig  # noqa: E402

K8S = Path(__file__).resolve().parents[2] / "k8s"
# The oldest release the manifests support (lifecycle.preStop.sleep is on by default from 1.30)
# and the newest whose schemas kubernetes-validate ships.
K8S_VERSIONS = ["1.30.0", kv.latest_version()]
OVERLAYS = ["base", "overlays/cpu", "overlays/gpu"]
KNOWN_KUSTOMIZE_KEYS = {"apiVersion", "kind", "resources", "patches", "images"}
POD_LABELS = {"app.kubernetes.io/name": "handserve", "app.kubernetes.io/component": "api"}


def _load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _merge(base: Any, patch: Any) -> Any:
    """Strategic merge as kustomize does it for the fields used here: maps merge key by key,
    lists of named objects (containers, env, volumes, ports) merge by ``name``, others replace."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(x, dict) and "name" in x for x in base + patch)
    ):
        out_list = [copy.deepcopy(x) for x in base]
        for item in patch:
            idx = next((i for i, x in enumerate(out_list) if x["name"] == item["name"]), None)
            if idx is None:
                out_list.append(copy.deepcopy(item))
            else:
                out_list[idx] = _merge(out_list[idx], item)
        return out_list
    return copy.deepcopy(patch)


def render(directory: Path) -> list[dict[str, Any]]:
    """The resources a ``kubectl apply -k DIRECTORY`` would create (subset of kustomize)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KNOWN_KUSTOMIZE_KEYS
    assert not unknown, f"{directory}: kustomization keys this test cannot render: {unknown}"
    resources: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        target = (directory / entry).resolve()
        assert target.exists(), f"{directory}/kustomization.yaml: {entry} does not exist"
        resources += render(target) if target.is_dir() else _load(target)
    for patch_entry in kustomization.get("patches", []):
        assert set(patch_entry) == {"path"}, f"only file patches are rendered: {patch_entry}"
        for patch in _load(directory / patch_entry["path"]):
            key = (patch["kind"], patch["metadata"]["name"])
            matches = [
                i for i, r in enumerate(resources) if (r["kind"], r["metadata"]["name"]) == key
            ]
            assert len(matches) == 1, f"{patch_entry['path']}: patch target {key} not found once"
            resources[matches[0]] = _merge(resources[matches[0]], patch)
    for image in kustomization.get("images", []):
        for resource in resources:
            for container in _containers(resource):
                name, _, tag = container["image"].partition(":")
                if name == image["name"]:
                    new_tag = image.get("newTag", tag)
                    container["image"] = image.get("newName", name) + (
                        f":{new_tag}" if new_tag else ""
                    )
    return resources


def _containers(resource: dict[str, Any]) -> list[dict[str, Any]]:
    if resource.get("kind") != "Deployment":
        return []
    return resource["spec"]["template"]["spec"]["containers"]


def _one(resources: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [r for r in resources if r["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(K8S / request.param)


def _standalone_files() -> list[Path]:
    """Every manifest file that is a complete resource (not a kustomization, not a patch)."""
    patches = {
        (kdir.parent / p["path"]).resolve()
        for kdir in K8S.rglob("kustomization.yaml")
        for p in (yaml.safe_load(kdir.read_text()).get("patches") or [])
    }
    return sorted(
        p
        for p in K8S.rglob("*.yaml")
        if p.name != "kustomization.yaml" and p.resolve() not in patches
    )


def test_every_yaml_file_is_accounted_for() -> None:
    files = _standalone_files()
    assert files, "no manifests found under k8s/"
    in_base = {
        K8S / "base" / e
        for e in yaml.safe_load((K8S / "base/kustomization.yaml").read_text())["resources"]
    }
    optional = {p for p in files if p.parent.name == "optional"}
    orphans = set(files) - in_base - optional
    assert not orphans, f"manifests in no kustomization and not under optional/: {orphans}"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_rendered_resources_validate_against_the_kubernetes_schema(
    rendered: tuple[str, list[dict[str, Any]]], version: str
) -> None:
    name, resources = rendered
    kinds = {r["kind"] for r in resources}
    assert kinds == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    for resource in resources:
        try:
            kv.validate(resource, version, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{name}: {resource['kind']} is invalid for Kubernetes {version}: {exc}")


def test_the_validator_rejects_a_broken_manifest() -> None:
    """Guards the check above: an unknown field and a wrong type must both fail."""
    deployment = copy.deepcopy(_one(render(K8S / "base"), "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, K8S_VERSIONS[-1], strict=True)
    deployment = copy.deepcopy(_one(render(K8S / "base"), "Deployment"))
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, K8S_VERSIONS[-1], strict=True)


def test_probes_ports_and_selectors_line_up(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, resources = rendered
    deployment = _one(resources, "Deployment")
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"] == POD_LABELS
    assert POD_LABELS.items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}

    def port_number(ref: str | int) -> int:
        return ports[ref] if isinstance(ref, str) else ref

    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/livez"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert port_number(container[probe]["httpGet"]["port"]) == ports["http"]

    service = _one(resources, "Service")
    assert service["spec"]["selector"] == POD_LABELS
    (service_port,) = service["spec"]["ports"]
    assert port_number(service_port["targetPort"]) == ports["http"]

    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["http"]
    assert annotations["prometheus.io/path"] == "/metrics"

    hpa = _one(resources, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"] >= 1
    pdb = _one(resources, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == POD_LABELS
    # The budget must always leave room to evict, or a node drain hangs on a lone replica.
    if "minAvailable" in pdb["spec"]:
        assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]
    else:
        assert pdb["spec"]["maxUnavailable"] >= 1


def test_resources_and_security(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, resources = rendered
    pod_spec = _one(resources, "Deployment")["spec"]["template"]["spec"]
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert pod_spec["securityContext"]["runAsUser"] != 0
    assert pod_spec["automountServiceAccountToken"] is False
    for container in pod_spec["containers"]:
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), (kind, container)
        ctx = container["securityContext"]
        assert ctx["runAsNonRoot"] is True
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["capabilities"]["drop"] == ["ALL"]
        # A read-only root needs somewhere to write: /tmp is an emptyDir, and every writable
        # location the environment names lives under it.
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod_spec["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]]
        env = _env(container)
        for var in ("TMPDIR", "BENTOML_HOME", "KERAS_HOME", "MPLCONFIGDIR"):
            assert env[var].startswith("/tmp"), var


def test_environment_matches_the_service_config(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    """Every HANDSERVE_* variable names a real ServiceConfig field, with a value it accepts."""
    _, resources = rendered
    (container,) = _one(resources, "Deployment")["spec"]["template"]["spec"]["containers"]
    env = _env(container)
    fields = set(ServiceConfig.model_fields)
    handserve_vars = {k: v for k, v in env.items() if k.startswith("HANDSERVE_")}
    assert {"HANDSERVE_MODELS_DIR", "HANDSERVE_RUNTIME"} <= set(handserve_vars)
    for key in handserve_vars:
        assert key.removeprefix("HANDSERVE_").lower() in fields, f"{key} is no ServiceConfig field"
    assert env["HANDSERVE_RUNTIME"] in get_args(Runtime)
    assert env["HANDSERVE_MODELS_DIR"].startswith("/")


def test_cpu_and_gpu_overlays_differ_where_they_should() -> None:
    cpu = _one(render(K8S / "overlays/cpu"), "Deployment")
    gpu = _one(render(K8S / "overlays/gpu"), "Deployment")
    (cpu_c,) = cpu["spec"]["template"]["spec"]["containers"]
    (gpu_c,) = gpu["spec"]["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in cpu_c["resources"]["limits"]
    assert _env(cpu_c)["HANDSERVE_RUNTIME"] == "litert"
    assert int(gpu_c["resources"]["limits"]["nvidia.com/gpu"]) == 1
    assert _env(gpu_c)["HANDSERVE_RUNTIME"] == "savedmodel"
    # The patch adds to the base's environment and mounts; it must not replace them.
    assert set(_env(cpu_c)) < set(_env(gpu_c))
    assert gpu_c["volumeMounts"] == cpu_c["volumeMounts"]
    assert gpu_c["livenessProbe"] == cpu_c["livenessProbe"]
    tolerations = gpu["spec"]["template"]["spec"]["tolerations"]
    assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)
    for container in (cpu_c, gpu_c):
        assert container["image"].startswith("registry.example.com/handserve:")


def test_the_optional_servicemonitor_matches_the_service() -> None:
    """Its CRD schema is not in kubernetes-validate, so check the fields that matter by hand."""
    (monitor,) = _load(K8S / "optional/servicemonitor.yaml")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["kind"] == "ServiceMonitor"
    service = _one(render(K8S / "base"), "Service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in port_names
        assert endpoint["path"] == "/metrics"
    with pytest.raises(kv.SchemaNotFoundError):
        kv.validate(monitor, K8S_VERSIONS[-1], strict=True)
