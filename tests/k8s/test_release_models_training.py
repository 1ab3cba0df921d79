"""Image pins, model delivery by volume and training in the cluster (issue 9, items 4 and 10).

Run: ``pytest tests/k8s/test_release_models_training.py``. Images come from one place
(k8s/release) with immutable tags, and ``make k8s-pin`` edits exactly that place; the
models-volume overlay serves, read-only and with hot reload, the same volume the training Job
exports to; the Job's command line and config are parsed by handserve's own ``train`` parser.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s.kube import (
    BUILDS,
    K8S,
    REPO,
    env,
    kustomize,
    needs_kubectl,
    of_kind,
    one,
    pod_spec,
    render,
)

MUTABLE_TAGS = {"latest", "latest-gpu", "stable", "main", "master", "dev", "edge", "nightly"}


def _containers(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for r in resources if (spec := pod_spec(r)) for c in spec["containers"]]


def _release_images() -> dict[str, dict[str, str]]:
    doc = yaml.safe_load((K8S / "release/kustomization.yaml").read_text())
    return {entry["name"]: entry for entry in doc["images"]}


@needs_kubectl
@pytest.mark.parametrize("name", BUILDS)
def test_images_are_pinned_in_release_with_immutable_tags(name: str) -> None:
    pinned = {e["newName"]: e for e in _release_images().values()}
    for container in _containers(render(name)):
        image = container["image"]
        repo, _, tag = image.partition("@")[0].rpartition(":")
        assert repo in pinned, f"{name}: {image} is not pinned in k8s/release"
        entry = pinned[repo]
        assert "digest" in entry or (tag and tag == entry["newTag"]), image
        assert tag.lower() not in MUTABLE_TAGS, f"{name}: mutable tag in {image}"
        assert container["imagePullPolicy"] == "IfNotPresent"  # right for a never-reused tag


def test_no_manifest_outside_release_sets_a_tag() -> None:
    """One place: a tag anywhere else would be missed by `make k8s-pin` and by a rollback."""
    for path in K8S.rglob("*.yaml"):
        if path.is_relative_to(K8S / "kserve") or path == K8S / "release/kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict):
                continue
            assert "images" not in doc, f"{path}: images belong in k8s/release"
            for spec in _walk_pod_specs(doc):
                for container in spec.get("containers", []):
                    if "image" in container:
                        assert ":" not in container["image"], f"{path}: {container['image']}"


def _walk_pod_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    template = doc.get("spec", {}).get("template", {}) if isinstance(doc.get("spec"), dict) else {}
    return [template["spec"]] if isinstance(template, dict) and "spec" in template else []


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@needs_kubectl
def test_make_k8s_pin_edits_only_the_release_file(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    before = _tree(copy)
    release = copy / "release/kustomization.yaml"

    def make(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["make", "-s", "-C", str(REPO), "k8s-pin", f"K8S_RELEASE={release}", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    out = make("REGISTRY=reg.example:5000/team", "TAG=20261122-4k3x7dq")
    assert out.returncode == 0, out.stderr
    after = _tree(copy)
    changed = {p for p in before if before[p] != after[p]}
    assert changed == {"release/kustomization.yaml"}
    assert set(after) == set(before)
    deployment = one(kustomize(copy / "overlays/cpu"), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "reg.example:5000/team/handserve:20261122-4k3x7dq"
    gpu = one(kustomize(copy / "overlays/gpu"), "Deployment")
    assert gpu["spec"]["template"]["spec"]["containers"][0]["image"].endswith(
        "/handserve-gpu:unreleased"
    )  # only the named image moved
    # A mutable tag is refused, and the file is left as it was.
    pinned = release.read_bytes()
    out = make("TAG=latest")
    assert out.returncode != 0
    assert "mutable tag" in out.stderr
    assert release.read_bytes() == pinned
    assert filecmp.cmp(copy / "base/deployment.yaml", K8S / "base/deployment.yaml", shallow=False)


@needs_kubectl
def test_the_models_volume_overlay_serves_the_volume_read_only_with_reload() -> None:
    resources = render("overlays/models-volume")
    spec = one(resources, "Deployment")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    variables = env(container)
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    models_dir = variables["HANDSERVE_MODELS_DIR"]
    assert mounts[models_dir]["readOnly"] is True
    volume = {v["name"]: v for v in spec["volumes"]}[mounts[models_dir]["name"]]
    assert volume["persistentVolumeClaim"] == {"claimName": "handserve-models", "readOnly": True}
    assert float(variables["HANDSERVE_RELOAD_INTERVAL_S"]) == 10
    (claim,) = of_kind(resources, "PersistentVolumeClaim")
    assert claim["metadata"]["name"] == "handserve-models"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # the Job writes, every pod reads


def _train_job(name: str) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    resources = render(name)
    job = one(resources, "Job")
    spec = job["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return resources, spec, container


def _parse_train(args: list[str]) -> argparse.Namespace:
    """The Job's arguments through ``handserve train``'s own parser (unknown flags fail)."""
    from training.cli import configure_train  # imported here: TensorFlow-free, but not light

    parser = argparse.ArgumentParser(prog="handserve train")
    configure_train(parser)
    assert args[0] == "train"
    return parser.parse_args(args[1:])


@needs_kubectl
@pytest.mark.parametrize("name", ["training", "training-gpu"])
def test_the_training_job_exports_to_the_volume_the_server_reads(name: str) -> None:
    from training.config import TrainConfig

    resources, spec, container = _train_job(name)
    assert container["command"] == ["handserve"]
    args = _parse_train(container["args"])
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}

    def volume_at(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
        (root,) = [m for m in mounts if path == m or path.startswith(m + "/")]
        return mounts[root], volumes[mounts[root]["name"]]

    # The config file comes from the generated ConfigMap, as train.yaml.
    mount, volume = volume_at(str(args.config))
    (config_map,) = of_kind(resources, "ConfigMap")
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    assert Path(args.config).name in config_map["data"]
    local = K8S / "training" / Path(args.config).name
    cfg = TrainConfig.load(local, flags=TrainConfig.flags_given(args))  # handserve's checks
    assert cfg.export is True
    mount, volume = volume_at(cfg.models_dir)
    assert not mount.get("readOnly")
    serving = one(render("overlays/models-volume"), "Deployment")["spec"]["template"]["spec"]
    served = {v["name"]: v for v in serving["volumes"]}["models"]
    assert (
        volume["persistentVolumeClaim"]["claimName"]
        == (served["persistentVolumeClaim"]["claimName"])
    )
    assert cfg.data_dir is not None
    mount, volume = volume_at(cfg.data_dir)
    assert mount["readOnly"] is True and "persistentVolumeClaim" in volume
    mount, volume = volume_at(cfg.runs_dir)
    assert "emptyDir" in volume
    assert spec["securityContext"]["fsGroup"] >= 10000  # the Job's group may write the volume


def test_the_training_config_is_the_repositorys_mnist_config() -> None:
    """k8s/training/train.yaml cannot include configs/mnist.yaml (kustomize stays in its folder),
    so it is a copy: it must not drift."""
    in_cluster = yaml.safe_load((K8S / "training/train.yaml").read_text())
    assert in_cluster == yaml.safe_load((REPO / "configs/mnist.yaml").read_text())


@needs_kubectl
def test_the_gpu_training_job_asks_for_a_gpu_and_its_image() -> None:
    _, spec, container = _train_job("training-gpu")
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == 1
    assert _parse_train(container["args"]).devices == "all"  # every GPU the pod gets
    _, _, cpu = _train_job("training")
    assert _parse_train(cpu["args"]).devices is None
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    assert "/handserve-tools-gpu:" in container["image"]


def test_the_tools_image_holds_what_the_jobs_run() -> None:
    dockerfile = (K8S / "training/Dockerfile").read_text()
    assert 'ENTRYPOINT ["handserve"]' in dockerfile
    assert "WORKDIR /opt/handserve" in dockerfile and "COPY . ." in dockerfile
    assert "locust" in dockerfile
    ignored = (K8S / "training/Dockerfile.dockerignore").read_text().split()
    assert {"models/*", "runs", ".git"} <= set(ignored)
    (job,) = [d for d in yaml.safe_load_all((K8S / "load/job.yaml").read_text()) if d]
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    locustfile = args[args.index("-f") + 1]
    assert (REPO / Path(locustfile).relative_to("/opt/handserve")).is_file()
