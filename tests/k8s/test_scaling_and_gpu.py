"""Autoscaling and the GPU overlay, checked on the real kustomize rendering (issue 9, items 5-7).

Run: ``pytest tests/k8s/test_scaling_and_gpu.py``. One scaler owns the replica count (no
``spec.replicas`` next to it), KEDA scales on requests in progress, and the GPU overlay can roll
out and drain without a spare GPU or an outage, with TensorFlow's threads capped to its CPU limit.
KEDA's ScaledObject has no schema in kubernetes-validate, so its fields are checked here; the
metric its query names is checked against a real server in tests/service/test_locustfile_server.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.k8s.kube import (
    SERVING,
    compose,
    cpu_cores,
    env,
    needs_kubectl,
    of_kind,
    one,
    render,
)

pytestmark = needs_kubectl

KEDA_METRIC = "bentoml_service_request_in_progress"


def _scalers(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return of_kind(resources, "HorizontalPodAutoscaler") + of_kind(resources, "ScaledObject")


def _min_replicas(scaler: dict[str, Any]) -> int:
    spec = scaler["spec"]
    return int(spec["minReplicas"] if scaler["kind"] != "ScaledObject" else spec["minReplicaCount"])


@pytest.mark.parametrize("name", SERVING)
def test_one_scaler_owns_the_replica_count(name: str) -> None:
    """`spec.replicas` next to an autoscaler resets the count on every `kubectl apply -k`."""
    resources = render(name)
    deployment = one(resources, "Deployment")
    assert "replicas" not in deployment["spec"]
    (scaler,) = _scalers(resources)  # two scalers on one Deployment fight each other
    target = scaler["spec"]["scaleTargetRef"]
    assert target["name"] == deployment["metadata"]["name"]
    assert target.get("kind", "Deployment") == "Deployment"
    maximum = scaler["spec"].get("maxReplicas", scaler["spec"].get("maxReplicaCount"))
    assert maximum >= _min_replicas(scaler) >= 2  # one pod can go (drain, rollout), one serves
    # The budget must let a drain evict, and never the last pod.
    pdb = one(resources, "PodDisruptionBudget")
    if "minAvailable" in pdb["spec"]:
        assert 1 <= pdb["spec"]["minAvailable"] < _min_replicas(scaler)
    else:
        assert 1 <= pdb["spec"]["maxUnavailable"] < _min_replicas(scaler)


def test_the_cpu_overlay_keeps_the_cpu_hpa() -> None:
    (hpa,) = of_kind(render("overlays/cpu"), "HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300


def _prometheus_trigger(scaled: dict[str, Any]) -> dict[str, Any]:
    (trigger,) = [t for t in scaled["spec"]["triggers"] if t["type"] == "prometheus"]
    meta: dict[str, Any] = trigger["metadata"]
    assert meta["serverAddress"].startswith("http")
    assert float(meta["threshold"]) > 0
    return meta


def test_keda_scales_the_cpu_server_on_requests_in_progress_and_cpu() -> None:
    resources = render("overlays/cpu-keda")
    assert not of_kind(resources, "HorizontalPodAutoscaler")  # KEDA makes its own
    scaled = one(resources, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    meta = _prometheus_trigger(scaled)
    assert meta["query"].startswith(f"sum({KEDA_METRIC}{{")
    assert 'namespace="handserve"' in meta["query"]
    assert {t["type"] for t in scaled["spec"]["triggers"]} == {"prometheus", "cpu"}
    behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300


def _gpu() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    resources = render("overlays/gpu")
    (container,) = one(resources, "Deployment")["spec"]["template"]["spec"]["containers"]
    return resources, container


def test_gpu_pods_scale_on_requests_in_progress_not_cpu() -> None:
    resources, _ = _gpu()
    assert not of_kind(resources, "HorizontalPodAutoscaler")
    scaled = one(resources, "ScaledObject")
    assert [t["type"] for t in scaled["spec"]["triggers"]] == ["prometheus"]
    assert KEDA_METRIC in _prometheus_trigger(scaled)["query"]


def test_a_gpu_rollout_needs_no_spare_gpu_and_a_drain_no_outage() -> None:
    resources, container = _gpu()
    deployment = one(resources, "Deployment")
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rolling == {"maxSurge": 0, "maxUnavailable": 1}
    pdb = one(resources, "PodDisruptionBudget")
    assert pdb["spec"] == {
        "minAvailable": 1,
        "selector": pdb["spec"]["selector"],
    }  # the base's maxUnavailable is gone, not kept beside it
    assert one(resources, "ScaledObject")["spec"]["minReplicaCount"] >= 2
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == 1
    tolerations = deployment["spec"]["template"]["spec"]["tolerations"]
    assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)


def test_tensorflow_threads_are_capped_to_the_cpu_limit() -> None:
    _, container = _gpu()
    variables = env(container)
    limit = cpu_cores(container["resources"]["limits"]["cpu"])
    for var in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
        assert 1 <= int(variables[var]) <= limit, (var, variables.get(var), limit)
    assert variables["HANDSERVE_RUNTIME"] == "savedmodel"


def test_the_gpu_overlay_adds_to_the_cpu_pod_without_replacing_it() -> None:
    cpu = one(render("overlays/cpu"), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    _, gpu = _gpu()
    assert set(env(cpu)) < set(env(gpu))
    assert gpu["volumeMounts"] == cpu["volumeMounts"]
    assert gpu["readinessProbe"] == cpu["readinessProbe"]
    assert gpu["image"].split(":")[0].endswith("/handserve-gpu")  # the GPU Bento's image
    assert cpu["image"].split(":")[0].endswith("/handserve")


def test_the_openshift_component_drops_the_fixed_uid(tmp_path: Path) -> None:
    resources = compose(tmp_path, ["overlays/cpu"], ["components/openshift"])
    ctx = one(resources, "Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert "runAsUser" not in ctx and "runAsGroup" not in ctx
    assert ctx["runAsNonRoot"] is True


def test_the_servicemonitor_is_found_by_kube_prometheus_stack(tmp_path: Path) -> None:
    resources = compose(tmp_path, ["overlays/cpu"], ["components/monitoring"])
    monitor = one(resources, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == "handserve"
    # kube-prometheus-stack's Prometheus selects ServiceMonitors by its Helm release label.
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    service = one(resources, "Service")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in port_names  # the port the NetworkPolicy admits
        assert endpoint["path"] == "/metrics"
