"""podman for the release tests: the engine's environment, a local registry, containers and
``podman kube play`` pods, each stopped and removed on exit.

The engine's configuration is the project's (``k8s/podman/containers.conf``, as ``make image``
uses it), its images and layers live in ``.cache/podman/storage`` (gitignored), so a second run
reuses the Debian base and the Bento's dependency layers. Tests skip, with the reason, only
where podman cannot run a container here: not root, no podman, runc, catatonit, mmdebstrap or
docker-registry (``scripts/install-test-tools.sh`` installs them from Debian), or ``podman
info`` failing.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from service.local_server import answers_200, free_port
from tests.k8s.kube import REPO

# k8s/image.py is a script next to the manifests (like k8s/pin_image.py), not a package.
_spec = importlib.util.spec_from_file_location("handserve_k8s_image", REPO / "k8s" / "image.py")
assert _spec is not None and _spec.loader is not None
image = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(image)

STORAGE = image.CACHE / "storage"
TOOLS = ("podman", "runc", "catatonit", "mmdebstrap", "docker-registry")


@functools.cache
def why_no_podman() -> str | None:
    """Why podman cannot run containers here, or None when it can."""
    if os.geteuid() != 0:
        # mmdebstrap, the host folders owned by the pods' uid and podman's configuration here
        # are the rootful ones (k8s/podman/containers.conf)
        return "the podman tests run as root (rootless podman is not set up for them)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed (scripts/install-test-tools.sh, as root)"
    info = subprocess.run(
        ["podman", "info", "--format", "{{.Host.OCIRuntime.Name}}"],
        env=image.engine_env(STORAGE),
        capture_output=True,
        text=True,
    )
    if info.returncode != 0:
        return f"podman cannot start here: {info.stderr.strip()[-500:]}"
    return None


def podman(*args: str, env: Mapping[str, str], check: bool = True) -> str:
    """``podman ARGS``: its stdout; a failure (when ``check``) with what it printed."""
    done = subprocess.run(["podman", *args], env=dict(env), capture_output=True, text=True)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: {done.returncode}\n{done.stderr[-3000:]}")
    return done.stdout


@contextlib.contextmanager
def local_registry() -> Iterator[str]:
    """Debian's ``docker-registry`` on a free loopback port, storing in a temporary folder;
    yields its ``HOST:PORT``."""
    root = Path(tempfile.mkdtemp(prefix="handserve-registry-"))
    port = free_port()
    config = {
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(root / "data")}},
        "http": {"addr": f"127.0.0.1:{port}"},
    }
    (root / "config.yml").write_text(yaml.safe_dump(config))
    with open(root / "registry.log", "wb") as log:
        proc = subprocess.Popen(
            ["docker-registry", "serve", str(root / "config.yml")], stdout=log, stderr=log
        )
    try:
        address = f"127.0.0.1:{port}"
        wait_http(
            f"http://{address}/v2/",
            lambda: None if proc.poll() is None else f"exited with {proc.returncode}",
            timeout=60,
            logs=lambda: (root / "registry.log").read_text(errors="replace"),
        )
        yield address
    finally:
        proc.terminate()
        proc.wait(15)
        shutil.rmtree(root, ignore_errors=True)


def wait_http(
    url: str,
    gone: Callable[[], str | None],
    *,
    timeout: float,
    logs: Callable[[], str],
) -> None:
    """Poll ``url`` until it answers 200. Fails at once when ``gone()`` says why the server
    is no longer running, and after ``timeout`` seconds; the error ends with ``logs()``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (reason := gone()) is not None:
            raise AssertionError(f"{url}: the server {reason}:\n{logs()[-4000:]}")
        if answers_200(url):
            return
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer 200 within {timeout}s:\n{logs()[-4000:]}")


def readable_dir(prefix: str) -> Path:
    """A temporary folder any uid may enter (pytest's tmp_path is 0700, and the pods run as
    uid 10001)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def make_readable(root: Path) -> None:
    subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)


def readiness(container: dict[str, Any]) -> tuple[str, int]:
    """The readiness probe's path and port number (a named port resolved), which the test
    polls itself: podman 4.3 ignores readiness and startup probes."""
    get = container["readinessProbe"]["httpGet"]
    port = get["port"]
    if isinstance(port, str):
        (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return get["path"], int(port)


@contextlib.contextmanager
def kube_play(
    resources: list[dict[str, Any]], where: Path, env: Mapping[str, str]
) -> Iterator[Callable[[], str]]:
    """``podman kube play --network host`` of ``resources`` (written to ``where``), torn down
    with ``podman kube down`` on exit; yields a function returning the pods' logs."""
    path = where / "play.yaml"
    path.write_text(yaml.safe_dump_all(resources))
    names = [r["metadata"]["name"] for r in resources if r["kind"] in {"Deployment", "Pod"}]

    def logs() -> str:
        out = []
        for name in names:
            pod = name if any(r["kind"] == "Pod" for r in resources) else f"{name}-pod-0"
            done = subprocess.run(
                ["podman", "pod", "logs", pod], env=dict(env), capture_output=True, text=True
            )
            out.append(done.stdout + done.stderr)
        return "\n".join(out)

    podman("kube", "play", "--network", "host", str(path), env=env)
    try:
        yield logs
    finally:
        podman("kube", "down", str(path), env=env, check=False)
