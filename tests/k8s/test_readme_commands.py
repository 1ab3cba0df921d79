"""Every command in k8s/README.md's code blocks is checked against what it would act on.

Run: ``pytest tests/k8s/test_readme_commands.py``. There is no cluster, registry or Docker
engine here, so each command is exercised as far as it can be offline: ``kubectl apply -k`` and
``kustomize`` builds render; ``kubectl`` commands on ``KIND/NAME`` name a resource that a build
creates, in the namespace it lives in; ``make`` targets exist and ``make k8s-pin`` /
``pin_image.py`` run on a copy of k8s/; ``handserve train`` is parsed by its own parser;
``docker build`` and ``bentoml``/``make release`` name files that exist. A command of any other
kind fails the test, so nothing new slips in unchecked.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.k8s.kube import BUILDS, K8S, NAMESPACE, REPO, needs_kubectl, render

pytestmark = needs_kubectl

README = K8S / "README.md"
KINDS = {
    "deployment": "Deployment",
    "service": "Service",
    "job": "Job",
    "hpa": "HorizontalPodAutoscaler",
    "scaledobject": "ScaledObject",
}
FAKE_DIGEST = "sha256:" + "0123456789abcdef" * 4


def _commands() -> list[list[str]]:
    """The README's ``bash`` blocks as argument lists, one per command line."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [
        shlex.split(line.replace("<digest>", FAKE_DIGEST.removeprefix("sha256:")), comments=True)
        for line in lines
        if line.strip() and not line.lstrip().startswith("#")
    ]


COMMANDS = _commands()


def _id(argv: list[str]) -> str:
    return " ".join(argv)[:60]


def test_the_readme_has_the_walkthrough() -> None:
    words = [" ".join(c[:2]) for c in COMMANDS]
    for step in ("handserve train", "make release", "kubectl apply", "kubectl rollout"):
        assert step in words, step
    assert ["kubectl", "rollout", "undo", "deployment/handserve", "-n", NAMESPACE] in COMMANDS


def _resources_named(kind: str, name: str) -> list[str]:
    """Builds that create ``kind`` ``name`` in the namespace."""
    return [
        build
        for build in BUILDS
        for r in render(build)
        if r["kind"] == kind
        and r["metadata"]["name"] == name
        and r["metadata"].get("namespace") == NAMESPACE
    ]


def _check_kubectl(argv: list[str]) -> None:
    if "-k" in argv:
        target = argv[argv.index("-k") + 1]
        assert target.removeprefix("k8s/") in BUILDS, f"{target} is not a build"
        assert render(target.removeprefix("k8s/"))
        return
    assert argv[argv.index("-n") + 1] == NAMESPACE, "every object lives in the namespace"
    refs = [a for a in argv[1:] if "/" in a and a.split("/")[0] in KINDS]
    if argv[1] == "get":  # kubectl get KIND NAME
        refs = [f"{argv[2]}/{argv[3]}"]
    assert refs, f"no KIND/NAME to check in {argv}"
    for ref in refs:
        kind, name = ref.split("/")
        assert _resources_named(KINDS[kind], name), f"no build creates {ref}"


def _makefile_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9_-]+):", text, re.M))


def _run_pin(argv: list[str], tmp_path: Path) -> None:
    """Run a pin command on a copy of k8s/ and check the pin landed in the release file."""
    copy = tmp_path / "k8s"
    if not copy.exists():
        shutil.copytree(K8S, copy)
    release = copy / "release/kustomization.yaml"
    if argv[0] == "make":
        command = ["make", "-s", "-C", str(REPO), *argv[1:], f"K8S_RELEASE={release}"]
    else:
        command = [str(REPO / ".venv/bin/python"), str(REPO / argv[1]), "--file", str(release)]
        command += argv[2:]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "pinned" in out.stdout


def _check_make(argv: list[str], tmp_path: Path) -> None:
    target = argv[1]
    assert target in _makefile_targets(), f"make {target}: no such target"
    variables = dict(a.split("=", 1) for a in argv[2:])
    if "BENTOFILE" in variables:
        assert (REPO / variables["BENTOFILE"]).is_file(), variables["BENTOFILE"]
    if target == "k8s-pin":
        _run_pin(argv, tmp_path)
    if target == "release":  # no Docker here: check what it would run (make -n runs nothing)
        out = subprocess.run(
            ["make", "-n", "-C", str(REPO), *argv[1:]], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        bentofile = variables.get("BENTOFILE", "bentofile.yaml")
        image = f"{variables['REGISTRY']}/{variables.get('IMAGE', 'handserve')}"
        assert f"service.bento_guard -f {bentofile}" in out.stdout  # refuses a model-less Bento
        assert f"bentoml build -f {bentofile} -o tag" in out.stdout
        assert f"docker push {image}:$version" in out.stdout
        assert f"{variables.get('IMAGE', 'handserve')} {image}:$version" in out.stdout  # the pin


def _check_train(argv: list[str]) -> None:
    from training.cli import configure_train
    from training.config import TrainConfig

    parser = argparse.ArgumentParser(prog="handserve train")
    configure_train(parser)
    args = parser.parse_args(argv[2:])
    assert (REPO / args.config).is_file()
    cfg = TrainConfig.load(REPO / args.config, flags=TrainConfig.flags_given(args))
    assert cfg.export is True  # step 2 builds from what this exported


def _check_docker(argv: list[str]) -> None:
    if argv[1] == "build":
        assert (REPO / argv[argv.index("-f") + 1]).is_file()
        assert argv[-1] == "."  # the repository root is the context
        tag = argv[argv.index("-t") + 1]
    else:
        assert argv[1] == "push"
        tag = argv[2]
    assert ":" in tag and not tag.endswith(":latest")


@pytest.mark.parametrize("argv", COMMANDS, ids=_id)
def test_each_command_acts_on_something_that_exists(argv: list[str], tmp_path: Path) -> None:
    program = argv[0]
    if program == "kubectl":
        _check_kubectl(argv)
    elif program == "make":
        _check_make(argv, tmp_path)
    elif program == "python" and argv[1] == "k8s/pin_image.py":
        _run_pin(argv, tmp_path)
    elif program == "handserve" and argv[1] == "train":
        _check_train(argv)
    elif program == "docker":
        _check_docker(argv)
    elif program == "pytest":
        for path in argv[1:]:
            assert (REPO / path).exists(), path
    else:
        pytest.fail(f"k8s/README.md: no check for {argv}; add one here")
