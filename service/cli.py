"""``handserve serve``: run ``bentoml serve service.service:HandServe`` with the right settings.

Flags override the config file; both become ``HANDSERVE_*`` environment variables, because
BentoML starts worker processes that import the service afresh and read only the environment.
Equivalent by hand::

    HANDSERVE_MODELS_DIR=models bentoml serve service.service:HandServe --port 3000
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

from handserve import configs
from service.config import CONFIG_ENV, ServiceConfig, load_service_config, to_env

log = logging.getLogger(__name__)
SERVICE = "service.service:HandServe"
REPO = Path(__file__).resolve().parents[1]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=3000, help="HTTP port (default: 3000)")
    parser.add_argument("--host", default="0.0.0.0", help="bind address (default: 0.0.0.0)")
    parser.add_argument("--config", default=None, help="service config file (.yaml/.toml/.json)")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the command and environment, do not run"
    )
    ServiceConfig.add_arguments(parser)


def build_command(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The ``bentoml serve`` command line and the environment for it (validated first)."""
    env = dict(os.environ)
    if args.config:
        env[CONFIG_ENV] = str(Path(args.config).resolve())
    flags = ServiceConfig.flags_given(args)
    if flags.get("grpc_port"):  # both ports on the address asked for
        flags.setdefault("grpc_host", args.host)
    if "models_dir" in flags:  # workers may start elsewhere: pass an absolute path
        flags["models_dir"] = str(Path(flags["models_dir"]).resolve())
    load_service_config(environ=env, flags=flags)  # fail here, naming the flag, not in a worker
    env.update(to_env(flags))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("BENTOML_DO_NOT_TRACK", "true")
    cmd = [sys.executable, "-m", "bentoml", "serve", SERVICE, "--port", str(args.port)]
    cmd += ["--host", args.host]
    return cmd, env


def run(args: argparse.Namespace) -> int:
    try:
        cmd, env = build_command(args)
    except configs.ConfigError as exc:
        print(f"handserve serve: {exc}", file=sys.stderr)  # noqa: T201 - CLI output
        return 2
    shown = {k: v for k, v in env.items() if k.startswith("HANDSERVE_")}
    if args.dry_run:
        for key, value in sorted(shown.items()):
            print(f"{key}={value}")  # noqa: T201 - CLI output
        print(" ".join(cmd))  # noqa: T201 - CLI output
        return 0
    # BentoML keeps the Prometheus multiprocess files of a server in $BENTOML_HOME and wipes
    # them when a server starts: a second server on the same host would erase the first one's
    # counters and mix its own in. Each server gets a home of its own (it serves from source,
    # so nothing from the Bento store is needed).
    env["BENTOML_HOME"] = tempfile.mkdtemp(prefix="handserve-bentoml-home-")
    log.info("starting %s with %s", " ".join(cmd), shown)
    # Become the server: signals sent to this PID (SIGTERM from a supervisor, Ctrl-C) reach
    # `bentoml serve` itself, which shuts its workers down gracefully. A child process would
    # leave the server running when only this wrapper is stopped.
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(cmd[0], cmd, env)
    return 0  # not reached
