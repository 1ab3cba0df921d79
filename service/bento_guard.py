"""Refuse to build a Bento that carries no model it can serve.

``models/*`` is ignored by git, so ``bentoml build`` on a clean checkout would pack an empty
models folder and every pod of that image would stay unready. ``bentoml build`` imports the
service module to read its definition, the only moment a build runs project code; so
:mod:`service.service` calls :func:`refuse_empty_build` at import (and nothing else does). It
finds BentoML's ``Bento.create`` on the call stack, reads
the Bento's environment from its build config (``HANDSERVE_RUNTIME``, ``HANDSERVE_LITERT_FILE``)
and checks the build context's ``models/`` the way the packaged server will: at least one
model whose manifest and runtime files verify. Anywhere else (``bentoml serve``, tests, the
CLI) it does nothing.

An image meant to serve models from a volume (k8s overlay ``models-volume``) is built empty on
purpose with ``HANDSERVE_ALLOW_EMPTY_BENTO=1``. ``python -m service.bento_guard [-f FILE]`` runs
the same check before a build (``make bento``) and lists what would be packed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from handserve import artifacts
from handserve.adapters.bentoml import build_locals
from handserve.runtimes import LiteRTRuntime

log = logging.getLogger(__name__)

ALLOW_ENV = "HANDSERVE_ALLOW_EMPTY_BENTO"


class EmptyBentoError(RuntimeError):
    """The build context holds no model the Bento's runtime can serve."""


@dataclass(frozen=True)
class BuildTarget:
    """What the Bento being built will serve: its context folder and its environment."""

    context: Path
    envs: dict[str, str]

    @property
    def runtime(self) -> str:
        return self.envs.get("HANDSERVE_RUNTIME", LiteRTRuntime.name)

    @property
    def litert_file(self) -> str | None:
        return self.envs.get("HANDSERVE_LITERT_FILE")


def building_bento(frame: FrameType | None = None) -> BuildTarget | None:
    """The Bento being built when called under ``bentoml build``, else None."""
    found = build_locals(frame)
    if found is None:
        return None
    config, context = found
    envs = {e.name: e.value for e in getattr(config, "envs", None) or []}
    return BuildTarget(Path(context or os.getcwd()), envs)


def servable(models_dir: Path, runtime: str, litert_file: str | None) -> dict[str, str]:
    """``{"name/version": ""}`` for each latest version that verifies, else the reason (the
    server's own check, :func:`handserve.artifacts.load_verified`)."""
    out = {}
    for name, versions in artifacts.list_models(models_dir).items():
        key = f"{name}/{versions[-1]}"
        try:
            artifacts.load_verified(models_dir / name / str(versions[-1]), runtime, litert_file)
            out[key] = ""
        except (artifacts.ArtifactError, OSError, ValueError) as exc:
            out[key] = str(exc)
    return out


def check(target: BuildTarget) -> list[str]:
    """The servable models of the build; raises EmptyBentoError when there is none."""
    models_dir = target.context / "models"
    found = servable(models_dir, target.runtime, target.litert_file)
    good = [k for k, why in found.items() if not why]
    if good:
        for key, why in found.items():
            if why:
                log.warning("the Bento packs %s, which the server will refuse: %s", key, why)
        return good
    problems = "".join(f"\n  {k}: {why}" for k, why in found.items()) or " (none found)"
    raise EmptyBentoError(
        f"refusing to build a Bento with no servable model: {models_dir} holds no model whose "
        f"manifest and {target.runtime} files verify{problems}\n"
        "Export one first (handserve train --export, see docs/service.md), or set "
        f"{ALLOW_ENV}=1 to build an image that serves models from a mounted volume "
        "(HANDSERVE_MODELS_DIR)."
    )


def allowed_empty(environ: Any = None) -> bool:
    value = (environ if environ is not None else os.environ).get(ALLOW_ENV, "")
    return value.strip().lower() in ("1", "true", "yes", "on")


def refuse_empty_build() -> None:
    """Under ``bentoml build``: raise EmptyBentoError unless a model is servable (or allowed)."""
    target = building_bento()
    if target is None:
        return
    if allowed_empty():
        log.warning("%s is set: building a Bento that may carry no model", ALLOW_ENV)
        return
    served = check(target)
    log.info("the Bento will serve %s (%s)", ", ".join(served), target.runtime)


def main(argv: list[str] | None = None) -> int:
    """``python -m service.bento_guard -f bentofile.yaml``: the check, before a build."""
    parser = argparse.ArgumentParser(prog="python -m service.bento_guard", description=__doc__)
    parser.add_argument("-f", "--bentofile", default="bentofile.yaml")
    parser.add_argument("context", nargs="?", default=".", help="build context (default: .)")
    args = parser.parse_args(argv)
    bentofile = yaml.safe_load(Path(args.bentofile).read_text()) or {}
    envs = {e["name"]: str(e.get("value", "")) for e in bentofile.get("envs") or []}
    target = BuildTarget(Path(args.context), envs)
    if allowed_empty():
        print(f"{ALLOW_ENV} is set: not checking models/")  # noqa: T201 - CLI output
        return 0
    try:
        served = check(target)
    except EmptyBentoError as exc:
        print(exc, file=sys.stderr)  # noqa: T201 - CLI output
        return 2
    print(f"{args.bentofile}: serves {', '.join(served)} ({target.runtime})")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
