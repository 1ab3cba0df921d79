"""The release path run for real with podman (issue 25): the image built, pushed, pulled and run;
the Deployment's pod spec run by ``podman kube play``; a new version in the models volume served
without a restart.

Run: ``pytest tests/k8s/test_release_podman.py``. What runs: ``make release-podman BASE=debian``
(k8s/README.md) in a copy of the project: the CPU Bento's image built by ``bentoml containerize
--backend podman`` on the Debian base (k8s/image.py), pushed to Debian's ``docker-registry`` on
127.0.0.1 and pinned; the image removed and pulled back by its pinned tag; started as uid 10001
with a read-only root, all capabilities dropped; ``make k8s-pin`` writing that tag; the rendered
``overlays/cpu`` and ``overlays/models-volume`` Deployments under ``podman kube play`` (their
pod spec as rendered: user, security context, read-only root, emptyDir at /tmp, environment,
resources, the models volume mounted read-only); the tools image and the training Job's pod
template; a rollback (k8s/README.md step 5) by re-pinning the previous tag.

Changed before playing, because podman is not a cluster: the image reference points at the local
registry's pull (k8s/release pinned by ``make k8s-pin``, as a release does), the
``handserve-models`` claim is a host folder (``hostPath``), and the pod shares the host's
network, so its port is a free one instead of 3000 (``containerPort`` and ``BENTOML_PORT``).
podman ignores readiness and startup probes, so the test polls the readiness probe's own path
and port. What stays validated offline only (the rest of tests/k8s/): the Service,
HPA, KEDA ScaledObject, NetworkPolicy, PodDisruptionBudget, Namespace, the rollout strategy and
the Job kind itself (podman 4.3 plays Pods and Deployments, not Jobs).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from handserve.artifacts import load_verified
from handserve.images import decode_image
from handserve.runtimes import open_runtime
from service.local_server import free_port
from tests.k8s import podman as pm
from tests.k8s.kube import REPO, kustomize, needs_kubectl, one
from tests.service.helpers import copy_version, digit_png

pytestmark = [pytest.mark.slow, pytest.mark.podman]

#: The uid the manifests run as; the image's own user is the name ``bentoml``.
UID = 10001
#: Kinds the rendered overlays hold that podman does not run (validated offline only).
OFFLINE_KINDS = {
    "Service",
    "HorizontalPodAutoscaler",
    "ScaledObject",
    "NetworkPolicy",
    "PodDisruptionBudget",
    "Namespace",
    "PersistentVolumeClaim",
    "ServiceMonitor",
}


@pytest.fixture(scope="module")
def engine() -> dict[str, str]:
    reason = pm.why_no_podman()
    if reason is not None:
        pytest.skip(f"podman cannot run containers here: {reason}")
    return pm.image.engine_env(pm.STORAGE)


@pytest.fixture(scope="module")
def registry(engine: dict[str, str]) -> Iterator[str]:
    with pm.local_registry() as address:
        yield address


@dataclass(frozen=True)
class Release:
    ref: str  # REGISTRY/handserve:VERSION, as pushed and pulled
    version: str  # the Bento's version: the immutable tag
    project: Path  # the project copy it was built from (its k8s/ is pinned to ref)
    models: Path  # the models/ packed into the image (tiny/1)


def _project(root: Path, export: Path) -> Path:
    """A copy of what a release builds from: sources, bentofiles, the image template, k8s/,
    the Makefile and ``models/tiny/1``."""
    project = root / "project"
    (project / "models").mkdir(parents=True)
    for rel in ("bentofile.yaml", "requirements", "handserve", "service", "k8s", "Makefile"):
        src = REPO / rel
        if src.is_dir():
            shutil.copytree(src, project / rel, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, project / rel)
    shutil.copy2(REPO / "models" / "README.md", project / "models" / "README.md")
    shutil.copytree(export, project / "models" / "tiny" / "1")
    return project


@pytest.fixture(scope="module")
def release(
    engine: dict[str, str],
    registry: str,
    tiny_export: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Release]:
    """Build -> push -> pin (``make release-podman BASE=debian``, k8s/README.md's command, in a
    copy of the project) -> remove the local copy -> pull by the pinned tag."""
    root = tmp_path_factory.mktemp("release")
    project = _project(root, tiny_export)
    env = dict(engine, BENTOML_HOME=str(root / "bentoml"), BENTOML_DO_NOT_TRACK="true")
    pm.image.build_base(env)  # from this checkout's .cache/podman tarball, not the copy's
    out = subprocess.run(
        # -o venv: the copy has no lock to sync; BIN is this checkout's environment
        [*("make", "-s", "-o", "venv", "release-podman", "BASE=debian", f"REGISTRY={registry}"),
         *("PUSH_FLAGS=--tls-verify=false", f"BIN={Path(sys.executable).parent}")],
        cwd=project, env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    pins = yaml.safe_load((project / "k8s/release/kustomization.yaml").read_text())
    (entry,) = [e for e in pins["images"] if e["name"] == "handserve"]
    ref, version = f"{entry['newName']}:{entry['newTag']}", entry["newTag"]
    assert ref.startswith(f"{registry}/handserve:")
    assert "pinned handserve -> " in out.stdout
    # --no-prune: the build's intermediate images stay, as the layer cache of the next run
    # (.cache/podman); the image itself is gone and must come back from the registry.
    pm.podman("rmi", "--no-prune", ref, env=env)
    assert not pm.image.image_exists(ref, env)
    pm.podman("pull", "--tls-verify=false", ref, env=env)
    try:
        yield Release(ref, version, project, project / "models")
    finally:
        pm.podman("rmi", "--force", "--no-prune", ref, env=env, check=False)


def _predict_locally(version_dir: Path, image: bytes) -> tuple[int, float]:
    """The .tflite run here with the serving code's own runner: best index and score."""
    manifest = load_verified(version_dir, "litert", "model.tflite")
    runtime = open_runtime(version_dir, manifest, runtime="litert")
    scores = runtime.predict(decode_image(image, manifest.input.image_spec)[None])[0]
    return int(scores.argmax()), float(scores.max())


def _assert_predicts(url: str, version_dir: Path, version: int) -> None:
    image = digit_png(4)
    r = requests.post(url + "/predict", files={"image": image}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model"], body["version"]) == ("tiny", version)
    index, score = _predict_locally(version_dir, image)
    assert body["predictions"][0]["index"] == index
    assert body["predictions"][0]["score"] == pytest.approx(score, abs=1e-5)


def test_image_has_no_build_tools(release: Release, engine: dict[str, str]) -> None:
    """BentoML's default template apt-installs build-essential and git; ours installs nothing."""
    out = pm.podman(
        "run", "--rm", "--entrypoint", "sh", release.ref, "-c",
        "for t in gcc cc make git g++; do command -v $t; done; "
        "dpkg-query -W -f '${Package}\\n' | grep -E '^(build-essential|gcc|git|gnupg2)$'; true",
        env=engine,
    )  # fmt: skip
    assert out.strip() == ""


def test_the_pulled_image_serves_as_non_root_with_a_read_only_root(
    release: Release, engine: dict[str, str], tmp_path: Path
) -> None:
    """The pulled image, run as uid 10001 with a read-only root, no capabilities and a tmpfs
    at /tmp (the pod's emptyDir): /readyz turns 200, /predict is the .tflite's answer."""
    port = free_port()
    name = f"handserve-release-{port}"
    argv = ["podman", "run", "--rm", "--name", name, "--network", "host", "--read-only"]
    argv += ["--user", f"{UID}:{UID}", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
    argv += ["--tmpfs", "/tmp:rw,mode=1777", "-e", f"BENTOML_PORT={port}"]
    for variable in ("TMPDIR=/tmp", "HOME=/tmp", "BENTOML_HOME=/tmp/bentoml"):
        argv += ["-e", variable]
    log = tmp_path / "container.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*argv, release.ref], env=engine, stdout=out, stderr=out)
    try:
        pm.wait_http(
            f"http://127.0.0.1:{port}/readyz",
            lambda: None if proc.poll() is None else f"exited with {proc.returncode}",
            timeout=240,
            logs=lambda: log.read_text(errors="replace"),
        )
        user = pm.podman("exec", name, "id", "-u", env=engine).strip()
        assert user == str(UID)
        touched = subprocess.run(
            ["podman", "exec", name, "touch", "/home/bentoml/bento/x"], env=engine
        )
        assert touched.returncode != 0  # the root filesystem is read-only
        _assert_predicts(f"http://127.0.0.1:{port}", release.models / "tiny" / "1", 1)
    finally:
        pm.podman("rm", "--force", name, env=engine, check=False)
        proc.wait(60)


def _make_pin(project: Path, image: str, registry: str, tag: str) -> None:
    """``make k8s-pin`` in the project copy, as k8s/README.md runs it."""
    out = subprocess.run(
        [
            *("make", "-s", "k8s-pin", f"IMAGE={image}", f"TAG={tag}", f"REGISTRY={registry}"),
            f"BIN={Path(sys.executable).parent}",
        ],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr


@needs_kubectl
def test_make_k8s_pin_writes_the_released_tag(release: Release, registry: str) -> None:
    _make_pin(release.project, "handserve", registry, release.version)
    pins = yaml.safe_load((release.project / "k8s/release/kustomization.yaml").read_text())
    (entry,) = [e for e in pins["images"] if e["name"] == "handserve"]
    assert f"{entry['newName']}:{entry['newTag']}" == release.ref
    (container,) = _deployment(release, "overlays/cpu")["spec"]["template"]["spec"]["containers"]
    assert container["image"] == release.ref


def _deployment(release: Release, overlay: str) -> dict[str, Any]:
    return one(kustomize(release.project / "k8s" / overlay), "Deployment")


def _playable(
    release: Release, overlay: str, models_dir: Path | None = None, ref: str | None = None
) -> tuple[list[dict[str, Any]], int]:
    """The overlay as rendered from the pinned k8s/ copy, with what podman cannot take
    replaced (module docstring); its Deployment only, and the port it will listen on. The
    image must be ``ref`` (default: the release's)."""
    ref = ref or release.ref
    pins = yaml.safe_load((release.project / "k8s/release/kustomization.yaml").read_text())
    if not any(f"{e['newName']}:{e.get('newTag')}" == ref for e in pins["images"]):
        pytest.skip(f"needs {ref} pinned (test_make_k8s_pin_writes_the_released_tag pins it)")
    resources = kustomize(release.project / "k8s" / overlay)
    assert {r["kind"] for r in resources} - {"Deployment"} <= OFFLINE_KINDS
    deployment = one(resources, "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["image"] == ref
    port = free_port()
    (http,) = [p for p in container["ports"] if p["name"] == "http"]
    http["containerPort"] = port
    # The probes name the port: resolve them now, then drop the list (with the host's network,
    # podman 4.3 refuses port mappings).
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        if container[probe]["httpGet"]["port"] == "http":
            container[probe]["httpGet"]["port"] = port
    # the gRPC port too: a free one on the host's network (and every worker listens on it)
    (grpc_var,) = [e for e in container["env"] if e["name"] == "HANDSERVE_GRPC_PORT"]
    grpc_var["value"] = str(free_port())
    container.pop("ports")
    container["env"].append({"name": "BENTOML_PORT", "value": str(port)})
    for volume in spec["volumes"]:
        if "persistentVolumeClaim" in volume:
            assert models_dir is not None, volume
            volume.pop("persistentVolumeClaim")
            volume["hostPath"] = {"path": str(models_dir), "type": "Directory"}
    return [deployment], port


def _pod_gone(deployment: str, env: dict[str, str]) -> str | None:
    """Why the Deployment's pod no longer runs (a container exited), or None."""
    out = pm.podman("ps", "-a", "--filter", f"pod={deployment}-pod-0", "--format", "json", env=env)
    for container in json.loads(out or "[]"):
        if not container["IsInfra"] and container["State"] != "running":
            return f"container {container['Names'][0]} is {container['State']}"
    return None


@needs_kubectl
def test_the_cpu_overlay_runs_under_kube_play(
    release: Release, engine: dict[str, str], tmp_path: Path
) -> None:
    """overlays/cpu: the model packed in the image, the pod spec as rendered."""
    resources, port = _playable(release, "overlays/cpu")
    container = resources[0]["spec"]["template"]["spec"]["containers"][0]
    path, probe_port = pm.readiness(container)
    assert probe_port == port
    with pm.kube_play(resources, tmp_path, engine) as logs:
        url = f"http://127.0.0.1:{port}"
        pm.wait_http(url + path, lambda: _pod_gone("handserve", engine), timeout=240, logs=logs)
        _assert_predicts(url, release.models / "tiny" / "1", 1)
        # the Deployment's gRPC port answers the Open Inference Protocol (ServerReady: true)
        (grpc_var,) = [e for e in container["env"] if e["name"] == "HANDSERVE_GRPC_PORT"]
        with grpc.insecure_channel(f"127.0.0.1:{grpc_var['value']}") as channel:
            ready = channel.unary_unary("/inference.GRPCInferenceService/ServerReady")
            assert ready(b"", timeout=30) == b"\x08\x01"  # ServerReadyResponse(ready=True)
        inspect = pm.podman("inspect", "handserve-pod-0-handserve", env=engine)
        state = yaml.safe_load(inspect)[0]
        assert state["HostConfig"]["ReadonlyRootfs"] is True
        assert state["Config"]["User"].startswith(str(UID))


@needs_kubectl
def test_the_models_volume_overlay_serves_a_new_version_without_restart(
    release: Release, engine: dict[str, str], tiny_export: Path, tmp_path: Path
) -> None:
    """overlays/models-volume with a host folder as the handserve-models volume: version 1
    serves; version 2 copied in (staged, then renamed, as an export does) is served by the same
    container, which never restarted."""
    models = pm.readable_dir("handserve-volume-")
    try:
        copy_version(tiny_export, models, "tiny", 1)
        pm.make_readable(models)
        resources, port = _playable(release, "overlays/models-volume", models)
        container = resources[0]["spec"]["template"]["spec"]["containers"][0]
        path, _ = pm.readiness(container)
        with pm.kube_play(resources, tmp_path, engine) as logs:
            url = f"http://127.0.0.1:{port}"
            gone = lambda: _pod_gone("handserve", engine)  # noqa: E731
            pm.wait_http(url + path, gone, timeout=240, logs=logs)
            _assert_predicts(url, models / "tiny" / "1", 1)
            started = _started_at(engine)
            # Staged in a hidden folder of the volume (the server skips those), then renamed
            # into place: the way training/export.py publishes a version.
            staging = models / "tiny" / ".staging-2"
            copy_version(tiny_export, staging, "tiny", 2)
            pm.make_readable(staging)
            (staging / "tiny" / "2").rename(models / "tiny" / "2")
            shutil.rmtree(staging)
            _wait_served(url, 2, gone, logs)
            _assert_predicts(url, models / "tiny" / "2", 2)
            assert _started_at(engine) == started  # the same process: no restart
    finally:
        shutil.rmtree(models, ignore_errors=True)


def _started_at(env: dict[str, str]) -> str:
    out = pm.podman("inspect", "--format", "{{.State.StartedAt}} {{.RestartCount}}",
                    "handserve-pod-0-handserve", env=env)  # fmt: skip
    return out.strip()


def _wait_served(url: str, version: int, gone: Any, logs: Any, model: str = "tiny") -> None:
    """Poll /metrics until every worker serves ``model`` ``version``: each worker reloads on
    its own timer (10 s), and ``handserve_model_info`` is a gauge in "max" mode that stays 1
    for an old version while any worker still serves it."""
    deadline = time.monotonic() + 180  # a hang guard
    while time.monotonic() < deadline:
        if (reason := gone()) is not None:
            raise AssertionError(f"the server {reason}:\n{logs()[-4000:]}")
        text = requests.get(url + "/metrics", timeout=10).text
        served = {
            s.labels["version"]: s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "handserve_model_info" and s.labels.get("name") == model
        }
        if served.get(str(version)) == 1 and sum(served.values()) == 1:
            return
        time.sleep(1)
    raise AssertionError(f"{model} {version} not served by every worker:\n{logs()[-4000:]}")


def _predict_new_model(url: str, model: str, image: bytes, gone: Any, logs: Any) -> Any:
    """POST /predict?model=MODEL until a worker that has loaded the new model answers 200 (a
    worker that has not yet answers that it does not know it); that answer."""
    deadline = time.monotonic() + 180  # a hang guard
    while time.monotonic() < deadline:
        if (reason := gone()) is not None:
            raise AssertionError(f"the server {reason}:\n{logs()[-4000:]}")
        r = requests.post(f"{url}/predict?model={model}", files={"image": image}, timeout=30)
        if r.status_code == 200:
            return r.json()
        time.sleep(1)
    raise AssertionError(f"{model} never served:\n{logs()[-4000:]}")


@pytest.fixture(scope="module")
def tools_image(release: Release, engine: dict[str, str]) -> Iterator[str]:
    """The tools image (k8s/training/Dockerfile) on the Debian base, pinned in the project's
    k8s/release with ``make k8s-pin`` as k8s/README.md does it."""
    tag = f"t{release.version}"
    ref = pm.image.build_tools(
        f"localhost/handserve-tools:{tag}",
        engine,
        pm.image.build_base(engine),
        "requirements/tools.txt",
    )
    _make_pin(release.project, "handserve-tools", "localhost", tag)
    try:
        yield ref
    finally:
        pm.podman("rmi", "--force", "--no-prune", ref, env=engine, check=False)


def _training_pod(release: Release, data: Path, models: Path) -> list[dict[str, Any]]:
    """k8s/training's Job as rendered, its pod template as a Pod (podman 4.3 plays no Jobs),
    with its ConfigMap, the data and models claims as host folders."""
    resources = kustomize(release.project / "k8s" / "training")
    job = one(resources, "Job")
    spec = job["spec"]["template"]["spec"]
    claims = {"handserve-data": data, "handserve-models": models}
    for volume in spec["volumes"]:
        if "persistentVolumeClaim" in volume:
            claim = volume.pop("persistentVolumeClaim")["claimName"]
            volume["hostPath"] = {"path": str(claims[claim]), "type": "Directory"}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": job["metadata"]["name"], "labels": job["metadata"]["labels"]},
        "spec": spec,
    }
    return [one(resources, "ConfigMap"), pod]


def _wait_exit(pod: str, env: dict[str, str], logs: Any, timeout: float = 900) -> int:
    """Wait for the pod's container to finish (a hang guard, not a speed check); its exit code."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = pm.podman("ps", "-a", "--filter", f"pod={pod}", "--format", "json", env=env)
        done = [c for c in json.loads(out or "[]") if not c["IsInfra"] and c["State"] == "exited"]
        if done:
            return int(done[0]["ExitCode"])
        time.sleep(2)
    raise AssertionError(f"{pod} still running after {timeout}s:\n{logs()[-4000:]}")


@needs_kubectl
def test_the_training_job_exports_into_the_volume_the_running_server_serves(
    release: Release, tools_image: str, engine: dict[str, str], tmp_path: Path
) -> None:
    """k8s/training's pod template trains on a small data set in a host folder and exports to
    the models folder that a running overlays/models-volume pod serves: the new model is
    served without a restart."""
    import numpy as np

    data, models = pm.readable_dir("handserve-data-"), pm.readable_dir("handserve-models-")
    try:
        rng = np.random.default_rng(0)
        (data / "mnist").mkdir()
        np.savez(
            data / "mnist" / "mnist.npz",
            x_train=rng.integers(0, 256, (200, 28, 28), dtype=np.uint8),
            y_train=(np.arange(200) % 10).astype(np.uint8),
            x_test=rng.integers(0, 256, (50, 28, 28), dtype=np.uint8),
            y_test=(np.arange(50) % 10).astype(np.uint8),
        )
        pm.make_readable(data)
        copy_version(release.models / "tiny" / "1", models, "tiny", 1)
        pm.make_readable(models)
        os.chown(models, UID, UID)  # what fsGroup gives the Job's group on a cluster's volume
        serving, port = _playable(release, "overlays/models-volume", models)
        path, _ = pm.readiness(serving[0]["spec"]["template"]["spec"]["containers"][0])
        url = f"http://127.0.0.1:{port}"
        (tmp_path / "serve").mkdir()
        (tmp_path / "train").mkdir()
        with pm.kube_play(serving, tmp_path / "serve", engine) as logs:
            gone = lambda: _pod_gone("handserve", engine)  # noqa: E731
            pm.wait_http(url + path, gone, timeout=240, logs=logs)
            started = _started_at(engine)
            training = _training_pod(release, data, models)
            with pm.kube_play(training, tmp_path / "train", engine) as train_logs:
                assert _wait_exit("handserve-train", engine, train_logs) == 0, train_logs()
            exported = models / "mnist" / "1"
            assert (exported / "manifest.json").is_file()
            image = digit_png(7)
            body = _predict_new_model(url, "mnist", image, gone, logs)
            assert (body["model"], body["version"]) == ("mnist", 1)
            index, score = _predict_locally(exported, image)
            assert body["predictions"][0]["index"] == index
            assert body["predictions"][0]["score"] == pytest.approx(score, abs=1e-5)
            assert _started_at(engine) == started
    finally:
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(models, ignore_errors=True)


@needs_kubectl
def test_a_rollback_re_pins_the_previous_tag_and_runs_it(
    release: Release, registry: str, engine: dict[str, str], tmp_path: Path
) -> None:
    """k8s/README.md step 5 with podman: a second release (a new Bento carrying version 2 of
    the model) is pinned and its pod serves version 2; re-pinning the first tag (the rollback)
    runs the first image again, which serves version 1."""
    project = tmp_path / "project"
    shutil.copytree(release.project, project)
    copy_version(release.models / "tiny" / "1", project / "models", "tiny", 2)
    env = dict(engine, BENTOML_HOME=str(tmp_path / "bentoml"), BENTOML_DO_NOT_TRACK="true")
    bento = pm.image.build_bento(project / "bentofile.yaml", project, env, pm.image.build_base(env))
    second = f"{registry}/handserve:{bento.partition(':')[2]}"
    assert second != release.ref  # a new, immutable tag per build
    pm.image.containerize(bento, second, env)
    pm.podman("push", "--tls-verify=false", second, env=env)
    try:
        for tag, ref, version in [
            (second.rpartition(":")[2], second, 2),
            (release.version, release.ref, 1),  # the rollback
        ]:
            _make_pin(release.project, "handserve", registry, tag)
            resources, port = _playable(release, "overlays/cpu", ref=ref)
            (tmp_path / tag).mkdir()
            with pm.kube_play(resources, tmp_path / tag, engine) as logs:
                url = f"http://127.0.0.1:{port}"
                gone = lambda: _pod_gone("handserve", engine)  # noqa: E731
                pm.wait_http(url + "/readyz", gone, timeout=240, logs=logs)
                _assert_predicts(url, release.models / "tiny" / "1", version)
    finally:
        pm.podman("rmi", "--force", "--no-prune", second, env=env, check=False)
