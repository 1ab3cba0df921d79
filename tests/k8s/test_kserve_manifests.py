"""The KServe examples (k8s/kserve over REST, k8s/kserve-grpc over gRPC) render, have only
fields KServe knows, and line up with the service: the protocol, the one routed port the server
listens on, probe paths it answers, settings it reads, and the image pinned in k8s/release.

No cluster: the rendered resources are checked field by field against the types of the kserve
SDK (``kserve.models``, generated from KServe's CRD schemas) and the Kubernetes client's, so a
misspelt or misplaced field fails here instead of being dropped by the API server.
"""

from __future__ import annotations

from typing import Any

import pytest

kserve_models = pytest.importorskip("kserve.models", reason="the kserve SDK is not installed")
k8s_models = pytest.importorskip("kubernetes.client.models")

from service.config import ServiceConfig  # noqa: E402
from tests.k8s.kube import KUBECTL, render  # noqa: E402

KINDS = {
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
    ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
}


def check_fields(value: Any, type_name: str, where: str) -> None:
    """Every key of ``value`` is a field of ``type_name`` (a swagger-generated model), deeply."""
    # swagger-codegen writes list[X] and dict(str, X); newer generators List[X], Dict[str, X]
    if type_name[:5] in ("list[", "List["):
        assert isinstance(value, list), f"{where}: expected a list"
        for i, item in enumerate(value):
            check_fields(item, type_name[5:-1], f"{where}[{i}]")
        return
    if type_name[:5] in ("dict(", "Dict["):
        assert isinstance(value, dict), f"{where}: expected a map"
        inner = type_name[type_name.index(",") + 1 : -1].strip()
        for key, item in value.items():
            check_fields(item, inner, f"{where}.{key}")
        return
    scalars: dict[str, Any] = {"str": str, "bool": bool, "float": (int, float), "int": int}
    if type_name in scalars:
        assert isinstance(value, scalars[type_name]), f"{where}: expected {type_name}"
        assert not (type_name == "int" and isinstance(value, bool)), f"{where}: expected int"
        return
    if type_name == "object":  # int-or-string and free-form fields
        return
    cls = getattr(kserve_models, type_name, None) or getattr(k8s_models, type_name)
    assert isinstance(value, dict), f"{where}: expected an object ({type_name})"
    by_json = {json_key: attr for attr, json_key in cls.attribute_map.items()}
    for key, item in value.items():
        assert key in by_json, f"{where}.{key}: not a field of {type_name}"
        check_fields(item, cls.openapi_types[by_json[key]], f"{where}.{key}")


#: folder -> the protocolVersion its InferenceService asks for
VARIANTS = {"kserve": "v2", "kserve-grpc": "grpc-v2"}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def rendered(request: pytest.FixtureRequest) -> dict[str, dict[str, Any]]:
    if KUBECTL is None:
        pytest.skip("kubectl (kustomize) is not installed; `make test` installs it")
    return {"folder": request.param, **{d["kind"]: d for d in render(request.param)}}


def test_every_field_is_one_kserve_knows(rendered) -> None:
    assert set(rendered) == {"folder", "ServingRuntime", "InferenceService"}
    for doc in (rendered["ServingRuntime"], rendered["InferenceService"]):
        type_name = KINDS[(doc["apiVersion"], doc["kind"])]
        check_fields(doc, type_name, doc["kind"])


def test_the_check_catches_a_misplaced_field() -> None:
    bad = {"spec": {"predictor": {"model": {"storageURI": "s3://x"}}}}
    with pytest.raises(AssertionError, match="storageURI: not a field of V1beta1ModelSpec"):
        check_fields(bad, "V1beta1InferenceService", "InferenceService")


def test_runtime_and_inference_service_line_up_with_the_server(rendered) -> None:
    runtime, isvc = rendered["ServingRuntime"], rendered["InferenceService"]
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    protocol = VARIANTS[rendered["folder"]]
    assert model["protocolVersion"] == protocol and runtime["spec"]["protocolVersions"] == [
        protocol
    ]
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"  # the container KServe routes to
    env = {e["name"]: e["value"] for e in container["env"]}
    port = int(env["BENTOML_PORT"])
    # KServe routes one port per container, HTTP ("http1") or gRPC (named "h2c"); the probes
    # and Prometheus use bentoml's HTTP port either way.
    (routed,) = container["ports"]
    if protocol == "grpc-v2":
        assert routed["name"] == "h2c" and routed["containerPort"] == int(
            env["HANDSERVE_GRPC_PORT"]
        )
        assert routed["containerPort"] != port
    else:
        assert routed["containerPort"] == port and "HANDSERVE_GRPC_PORT" not in env
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == port, probe
    assert int(runtime["spec"]["annotations"]["prometheus.kserve.io/port"]) == port
    # The storage initializer puts the model files at /mnt/models.
    assert env["HANDSERVE_MODELS_DIR"] == "/mnt/models"
    fields = set(ServiceConfig.model_fields)
    for name in env:
        if name.startswith("HANDSERVE_"):
            assert name.removeprefix("HANDSERVE_").lower() in fields, name
    # The image is the one pinned in k8s/release, never a bare or mutable name.
    image = container["image"]
    assert "/" in image and not image.endswith(":latest"), image
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])


def test_probe_paths_are_routes_the_service_answers(rendered) -> None:
    from service.service import app

    paths = {getattr(route, "path", None) for route in app.routes}
    (container,) = rendered["ServingRuntime"]["spec"]["containers"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in paths, probe
