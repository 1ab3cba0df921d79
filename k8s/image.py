"""Build handserve's container images with podman, on a base made from Debian's packages when no
registry base image can be pulled.

    python k8s/image.py bento --base debian    # make image BASE=debian: localhost/handserve:VERSION
    python k8s/image.py bento --repository registry.example.com/handserve  # BentoML's default base
    python k8s/image.py tools --base debian --tag localhost/handserve-tools:dev
    python k8s/image.py base                       # only the Debian base (cached in .cache/podman)

``bento`` builds the Bento (``bentoml build``, after ``service.bento_guard``) and its image with
BentoML's own ``bentoml containerize --backend podman``. With ``--base default`` that is BentoML's
default Dockerfile on ``python:3.11-slim``, which installs build-essential, git and gnupg2 with
apt on top. With ``--base debian`` the Bento is built from a copy of the bentofile whose
``docker`` section names the Debian base and ``k8s/image/Dockerfile.j2`` (BentoML's
``dockerfile_template``), which keeps BentoML's own template blocks, but installs no system
packages: the service needs none (every Python package it uses comes as a binary wheel).

The Debian base (``localhost/handserve-base:bookworm-<hash>``) is Debian's python3 (3.11, the
version the lock is for), ca-certificates and the locked uv, made by ``mmdebstrap`` from
Debian's archive and imported with ``podman import``: the machines this project is tested on
reach Debian's and the package index's mirrors but no container registry. Its tarball is cached
under ``.cache/podman`` keyed by what goes into it, so it is made once per change.

Builds run RUN steps on the host's network (so ``uv pip install`` reaches the index) and, when
the host has a CA bundle, with it mounted read-only over the image's during the build only (a
TLS-intercepting proxy's CA then works, and nothing of it stays in the image).

podman reads ``CONTAINERS_CONF``; unless it is set, this uses ``k8s/podman/containers.conf``
(runc, cgroupfs, explicit ulimits: what Debian bookworm's podman 4.3 needs as root).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

log = logging.getLogger("handserve.image")

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "podman"
CONTAINERS_CONF = REPO / "k8s" / "podman" / "containers.conf"
TEMPLATE = "k8s/image/Dockerfile.j2"
#: Debian release and packages of the base: python3 is 3.11 in bookworm, the lock's Python.
SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
BASE_REPO = "localhost/handserve-base"
#: Left out of the base's root filesystem: documentation and translations nobody reads there.
DPKG_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*")
#: Debian's CA bundle: where the base keeps its own, and where a Debian host keeps the host's.
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
#: The base's environment. uv and pip bundle CA lists of their own: pointing them at the system's
#: lets a build trust what the host trusts (HOST_CA is mounted over it during builds).
BASE_ENV = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    f"SSL_CERT_FILE={HOST_CA}",
    f"PIP_CERT={HOST_CA}",
)


class ImageError(RuntimeError):
    """A build step failed; the message names the command and ends with what it printed."""


def engine_env(storage: Path | None = None) -> dict[str, str]:
    """The environment podman (and BentoML calling podman) runs with: the project's
    ``containers.conf`` unless ``CONTAINERS_CONF`` is set; with ``storage``, images and layers
    kept in that folder instead of podman's default (the tests keep theirs in .cache/podman)."""
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(CONTAINERS_CONF))
    if storage is not None:
        storage.mkdir(parents=True, exist_ok=True)
        conf = storage / "storage.conf"
        conf.write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{storage / "root"}"\n'
            f'runroot = "{storage / "run"}"\n'
        )
        env["CONTAINERS_STORAGE_CONF"] = str(conf)
    return env


def run(argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path | None = None) -> str:
    """Run a command to the end; its stdout, or :class:`ImageError` with its output's tail."""
    log.info("$ %s", " ".join(argv))
    done = subprocess.run(
        list(argv), env=dict(env) if env else None, cwd=cwd, capture_output=True, text=True
    )
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-4000:]
        raise ImageError(f"{' '.join(argv[:3])} ... exited with {done.returncode}:\n{tail}")
    return done.stdout


def image_exists(ref: str, env: Mapping[str, str]) -> bool:
    return subprocess.run(["podman", "image", "exists", ref], env=dict(env)).returncode == 0


def _uv() -> Path:
    """The locked uv (``make venv`` puts it in .venv): BentoML's Dockerfile uses the base's uv
    when it is recent enough instead of pip-installing one, and Debian's python has no pip."""
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if found is None:
        raise ImageError("uv not found next to this Python or on PATH (make venv installs it)")
    return Path(found).resolve()


def _key(*parts: str) -> str:
    """``SUITE-<hash>`` of what goes into the base and the locked uv's version."""
    uv_version = run([str(_uv()), "--version"]).split()[1]
    text = "|".join([SUITE, *BASE_PACKAGES, *DPKG_EXCLUDES, *parts, uv_version])
    return f"{SUITE}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def base_ref() -> str:
    """The Debian base's name, whose tag changes with anything that goes into it."""
    return f"{BASE_REPO}:{_key(*BASE_ENV)}"


def _tarball_key() -> str:
    """The root filesystem's cache key: what mmdebstrap puts in (not the image's ENV)."""
    return _key()


def build_base(env: Mapping[str, str]) -> str:
    """The Debian base image in podman's storage: imported from the cached tarball, which
    ``mmdebstrap`` makes from Debian's archive when absent. Returns its reference."""
    ref = base_ref()
    if image_exists(ref, env):
        return ref
    tarball = CACHE / f"{_tarball_key()}.tar"
    if not tarball.is_file():
        if shutil.which("mmdebstrap") is None:
            raise ImageError("mmdebstrap is not installed (apt-get install mmdebstrap)")
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_suffix(".partial.tar")
        run(
            [
                "mmdebstrap",
                "--variant=minbase",
                "--include=" + ",".join(BASE_PACKAGES),
                *(f"--dpkgopt=path-exclude={p}" for p in DPKG_EXCLUDES),
                f"--customize-hook=copy-in {_uv()} /usr/local/bin",
                SUITE,
                str(partial),
            ]
        )
        partial.rename(tarball)  # only a complete tarball is ever reused
    changes = [arg for variable in BASE_ENV for arg in ("--change", f"ENV {variable}")]
    run(["podman", "import", *changes, str(tarball), ref], env)
    return ref


def build_options() -> list[str]:
    """podman build options (``NAME=VALUE``, as ``bentoml containerize --opt`` takes them): the
    host's network, and the host's CA bundle during RUN steps only."""
    opts = ["network=host"]
    if HOST_CA.is_file():
        opts.append(f"volume={HOST_CA}:{HOST_CA}:ro")
    return opts


def debian_bentofile(bentofile: Path, base: str, out: Path) -> Path:
    """A copy of ``bentofile`` whose image is built on ``base`` with the project's template
    (no apt step); everything else, includes and requirements, is the original's."""
    config = yaml.safe_load(bentofile.read_text())
    config["docker"] = {"base_image": base, "dockerfile_template": TEMPLATE}
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def build_bento(
    bentofile: Path, context: Path, env: Mapping[str, str], base: str | None = None
) -> str:
    """``bentoml build`` of ``bentofile`` in ``context`` (on ``base`` when given); the Bento's
    tag (``name:version``)."""
    with tempfile.TemporaryDirectory(prefix="handserve-bentofile-") as tmp:
        if base is not None:
            bentofile = debian_bentofile(bentofile, base, Path(tmp) / "bentofile.yaml")
        out = run(
            [sys.executable, "-m", "bentoml", "build", "-f", str(bentofile), "-o", "tag"],
            env,
            cwd=context,
        )
    tags = [line.removeprefix("__tag__:") for line in out.splitlines() if "__tag__:" in line]
    if not tags:
        raise ImageError(f"bentoml build printed no tag:\n{out[-2000:]}")
    return tags[-1].strip()


def containerize(bento_tag: str, image: str, env: Mapping[str, str]) -> str:
    """``bentoml containerize --backend podman`` of ``bento_tag`` as ``image``."""
    opts = [f"--opt={o}" for o in build_options()]
    argv = [sys.executable, "-m", "bentoml", "containerize", "--backend", "podman"]
    # BentoML 1.4 re-renders a dockerfile_template from a copy of the Bento in a temporary
    # folder and refuses to read a template outside the working directory: run it from there.
    run([*argv, *opts, "-t", image, bento_tag], env, cwd=Path(tempfile.gettempdir()))
    return image


def build_tools(image: str, env: Mapping[str, str], base: str, requirements: str) -> str:
    """The tools image (k8s/training/Dockerfile: training, export, load test) on ``base``."""
    dockerfile = "k8s/training/Dockerfile"
    argv = ["podman", "build", "-f", dockerfile, "--ignorefile", f"{dockerfile}.dockerignore"]
    argv += ["--build-arg", f"BASE={base}"]
    argv += ["--build-arg", f"REQUIREMENTS={requirements}"]
    argv += [f"--{o}" for o in build_options()]
    run([*argv, "-t", image, "."], env, cwd=REPO)
    return image


def image_size(ref: str, env: Mapping[str, str]) -> int:
    """The image's size in bytes as podman reports it (its layers, uncompressed)."""
    return int(run(["podman", "image", "inspect", "--format", "{{.Size}}", ref], env).strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("base", help="only the Debian base image")
    for name in ("bento", "tools"):
        p = sub.add_parser(name)
        p.add_argument(
            "--base",
            choices=("default", "debian"),
            default="default",
            help="default: python:3.11-slim from Docker Hub; debian: made with mmdebstrap",
        )
    bento = sub.choices["bento"]
    bento.add_argument("--bentofile", default="bentofile.yaml")
    bento.add_argument(
        "--repository",
        help="the image is REPOSITORY:BENTO_VERSION (default: localhost/BENTO_NAME), a new, "
        "immutable tag per build",
    )
    tools = sub.choices["tools"]
    tools.add_argument("--tag", required=True, help="the image reference to build")
    tools.add_argument("--requirements", default="requirements/tools.txt")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    env = engine_env()
    try:
        if args.what == "base":
            sys.stdout.write(build_base(env) + "\n")
            return 0
        base = build_base(env) if args.base == "debian" else None
        if args.what == "bento":
            bento = build_bento(REPO / args.bentofile, REPO, env, base)
            name, _, version = bento.partition(":")
            image = containerize(bento, f"{args.repository or 'localhost/' + name}:{version}", env)
        else:
            image = build_tools(args.tag, env, base or "python:3.11-slim", args.requirements)
    except ImageError as exc:
        log.error("%s", exc)
        return 1
    log.info("built %s: %.0f MB", image, image_size(image, env) / 1e6)
    sys.stdout.write(image + "\n")  # the one line on stdout: `make release-podman` reads it
    return 0


if __name__ == "__main__":
    sys.exit(main())
