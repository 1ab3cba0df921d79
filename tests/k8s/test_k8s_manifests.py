"""The Kubernetes manifests in k8s/ are valid and hang together, checked offline.

Run: ``pytest tests/k8s/test_k8s_manifests.py``. No cluster and no network: every build a user
applies (``kubectl apply -k k8s/...``) is rendered with the real kustomize (``kubectl
kustomize``), every resource is validated with ``kubernetes-validate`` against the Kubernetes
OpenAPI schemas of 1.29 to the newest it ships (strict: unknown fields fail), and the
invariants a cluster would only reveal at run time are asserted: probes on /livez and /readyz,
ports that line up, resources, non-root without a fixed low UID, a read-only root with writable
emptyDirs, one namespace, NetworkPolicies. The overlays' own features (GPU, KEDA, model volume,
training and load-test Jobs, image pins) are in the other files of tests/k8s/; the policy scan in
test_k8s_policy.py.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml

from service.config import RuntimeChoice, ServiceConfig
from tests.k8s.kube import (
    BUILDS,
    CLUSTER_SCOPED,
    CRD_KINDS,
    INCLUDED,
    K8S,
    NAMESPACE,
    POD_LABELS,
    SERVING,
    env,
    needs_kubectl,
    of_kind,
    one,
    pod_spec,
    render,
)

kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")

_SCHEMAS = Path(kv.__file__).parent / "kubernetes-json-schema"
# 1.29 is the oldest release the issue promises; the newest is the latest kubernetes-validate
# ships (a new kubernetes-validate adds its new versions here by itself).
K8S_VERSIONS = sorted(
    {
        p.name.removeprefix("v").removesuffix("-local-strict")
        for p in _SCHEMAS.glob("v1.*-local-strict")
        if int(p.name.split(".")[1]) >= 29
    },
    key=lambda v: tuple(int(x) for x in v.split(".")),
)


def test_every_kustomization_is_built_or_included() -> None:
    """A new folder must join BUILDS (and so every check here) or be included by one."""
    folders = set()
    for path in K8S.rglob("kustomization.yaml"):
        if path.is_relative_to(K8S / "kserve") or path.is_relative_to(K8S / "kserve-grpc"):
            continue  # KServe's manifests have tests of their own
        if yaml.safe_load(path.read_text())["kind"] == "Kustomization":
            folders.add(path.parent.relative_to(K8S).as_posix())
    assert folders == set(BUILDS) | set(INCLUDED)


def test_the_oldest_and_newest_versions_are_checked() -> None:
    assert K8S_VERSIONS[0] == "1.29.0"
    assert K8S_VERSIONS[-1] == kv.latest_version()


def _resource_files() -> list[Path]:
    """Every file a kustomization (or component) lists under ``resources``: whole resources,
    as opposed to patches, which are partial by design."""
    files = set()
    for kfile in K8S.rglob("kustomization.yaml"):
        if kfile.is_relative_to(K8S / "kserve") or kfile.is_relative_to(K8S / "kserve-grpc"):
            continue
        for entry in yaml.safe_load(kfile.read_text()).get("resources") or []:
            path = (kfile.parent / entry).resolve()
            if path.is_file():
                files.add(path)
    return sorted(files)


def test_resource_files_validate_without_kustomize() -> None:
    """Runs without kubectl too: the files as written, before any overlay touches them."""
    files = _resource_files()
    assert len(files) >= 10, files
    for path in files:
        for resource in yaml.safe_load_all(path.read_text()):
            if not resource or resource["kind"] in CRD_KINDS:
                continue
            for version in K8S_VERSIONS:
                try:
                    kv.validate(resource, version, strict=True)
                except kv.ValidationError as exc:
                    pytest.fail(f"{path}: {resource['kind']} is invalid for {version}: {exc}")


@needs_kubectl
@pytest.mark.parametrize("name", [*BUILDS, "base"])
def test_rendered_resources_validate_against_the_kubernetes_schema(name: str) -> None:
    resources = render(name)
    for resource in resources:
        for version in K8S_VERSIONS:
            if resource["kind"] in CRD_KINDS:
                continue  # no schema shipped; tests/k8s checks their fields
            try:
                kv.validate(resource, version, strict=True)
            except kv.ValidationError as exc:
                pytest.fail(
                    f"{name}: {resource['kind']} is invalid for Kubernetes {version}: {exc}"
                )


@needs_kubectl
def test_the_validator_rejects_a_broken_manifest() -> None:
    """Guards the check above: an unknown field and a wrong type must both fail."""
    deployment = copy.deepcopy(one(render("overlays/cpu"), "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, K8S_VERSIONS[-1], strict=True)
    deployment = copy.deepcopy(one(render("overlays/cpu"), "Deployment"))
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, K8S_VERSIONS[0], strict=True)


@needs_kubectl
@pytest.mark.parametrize("name", BUILDS)
def test_everything_lives_in_one_namespace_that_the_build_creates(name: str) -> None:
    resources = render(name)
    (namespace,) = of_kind(resources, "Namespace")
    assert namespace["metadata"]["name"] == NAMESPACE
    # The restricted Pod Security Standard is enforced: every pod here is built to pass it.
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for resource in resources:
        if resource["kind"] not in CLUSTER_SCOPED:
            assert resource["metadata"].get("namespace") == NAMESPACE, resource["metadata"]


@needs_kubectl
@pytest.mark.parametrize("name", SERVING)
def test_probes_ports_and_selectors_line_up(name: str) -> None:
    resources = render(name)
    deployment = one(resources, "Deployment")
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"] == POD_LABELS
    assert POD_LABELS.items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}

    def port_number(ref: str | int) -> int:
        return ports[ref] if isinstance(ref, str) else ref

    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"  # ready once warm
    assert container["startupProbe"]["httpGet"]["path"] == "/livez"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert port_number(container[probe]["httpGet"]["port"]) == ports["http"]
    # In-flight requests finish: endpoints drop the pod during preStop, then SIGTERM drains.
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] >= 1
    assert (
        pod["spec"]["terminationGracePeriodSeconds"]
        > (container["lifecycle"]["preStop"]["sleep"]["seconds"])
    )

    service = one(resources, "Service")
    assert service["spec"]["selector"] == POD_LABELS
    by_name = {p["name"]: p for p in service["spec"]["ports"]}
    assert set(by_name) == {"http", "grpc"}
    assert port_number(by_name["http"]["targetPort"]) == ports["http"]
    # the gRPC port is the one the workers listen on, and gateways know it is HTTP/2
    assert port_number(by_name["grpc"]["targetPort"]) == ports["grpc"]
    assert ports["grpc"] == int(env(container)["HANDSERVE_GRPC_PORT"])
    assert by_name["grpc"]["appProtocol"] == "kubernetes.io/h2c"

    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["http"]
    assert annotations["prometheus.io/path"] == "/metrics"


def _pods(resources: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(r, spec) for r in resources if (spec := pod_spec(r)) is not None]


@needs_kubectl
@pytest.mark.parametrize("name", BUILDS)
def test_pods_run_as_any_non_root_uid_with_a_read_only_root(name: str) -> None:
    pods = _pods(render(name))
    assert pods, f"{name} runs no pod"
    for resource, spec in pods:
        where = f"{name}: {resource['kind']} {resource['metadata']['name']}"
        ctx = spec["securityContext"]
        assert ctx["runAsNonRoot"] is True, where
        # No fixed low UID (checkov CKV_K8S_40, OpenShift's ranges): unset, or >= 10000.
        assert ctx.get("runAsUser", 10000) >= 10000, where
        assert ctx["seccompProfile"]["type"] == "RuntimeDefault", where
        assert spec["automountServiceAccountToken"] is False, where
        volumes = {v["name"]: v for v in spec["volumes"]}
        for container in spec["containers"]:
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), (where, kind)
            cctx = container["securityContext"]
            assert cctx["runAsNonRoot"] is True, where
            assert cctx["allowPrivilegeEscalation"] is False, where
            assert cctx["readOnlyRootFilesystem"] is True, where
            assert cctx["capabilities"]["drop"] == ["ALL"], where
            # Everything the environment says to write to lies in an emptyDir mount.
            scratch = [
                m["mountPath"]
                for m in container["volumeMounts"]
                if "emptyDir" in volumes[m["name"]] and not m.get("readOnly")
            ]
            assert scratch, f"{where}: no writable emptyDir"
            for var in ("TMPDIR", "HOME", "KERAS_HOME", "MPLCONFIGDIR", "BENTOML_HOME"):
                value = env(container).get(var)
                if value is not None:
                    assert any(value.startswith(s) for s in scratch), (where, var, value)


@needs_kubectl
@pytest.mark.parametrize("name", BUILDS)
def test_every_pod_is_behind_a_network_policy(name: str) -> None:
    resources = render(name)
    policies = of_kind(resources, "NetworkPolicy")
    for resource, _spec in _pods(resources):
        labels = resource["spec"]["template"]["metadata"]["labels"]
        selecting = [
            p
            for p in policies
            if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
            and "Ingress" in p["spec"]["policyTypes"]
        ]
        assert selecting, f"{name}: {resource['metadata']['name']} has no ingress policy"


@needs_kubectl
@pytest.mark.parametrize("name", SERVING)
def test_the_server_admits_only_its_service_ports(name: str) -> None:
    """Clients (HTTP and gRPC) and Prometheus (/metrics is on the HTTP port) get in; nothing
    else does."""
    resources = render(name)
    (policy,) = [
        p
        for p in of_kind(resources, "NetworkPolicy")
        if p["spec"]["podSelector"]["matchLabels"] == POD_LABELS
    ]
    (container,) = one(resources, "Deployment")["spec"]["template"]["spec"]["containers"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [
        {"port": "http", "protocol": "TCP"},
        {"port": "grpc", "protocol": "TCP"},
    ]
    assert {"http", "grpc"} == {p["name"] for p in container["ports"]}
    service = one(resources, "Service")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http", "grpc"]


@needs_kubectl
@pytest.mark.parametrize("name", SERVING)
def test_environment_matches_the_service_config(name: str) -> None:
    """Every HANDSERVE_* variable names a real ServiceConfig field, with a value it accepts."""
    (container,) = one(render(name), "Deployment")["spec"]["template"]["spec"]["containers"]
    variables = env(container)
    fields = set(ServiceConfig.model_fields)
    handserve_vars = {k: v for k, v in variables.items() if k.startswith("HANDSERVE_")}
    assert {"HANDSERVE_MODELS_DIR", "HANDSERVE_RUNTIME"} <= set(handserve_vars)
    for key in handserve_vars:
        assert key.removeprefix("HANDSERVE_").lower() in fields, f"{key} is no ServiceConfig field"
    assert variables["HANDSERVE_RUNTIME"] in get_args(RuntimeChoice)
    assert variables["HANDSERVE_MODELS_DIR"].startswith("/")
