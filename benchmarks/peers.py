"""handserve against its peers, in one run: the same export served by handserve, the naive
per-request server, KServe's ``ModelServer`` and Triton (PyTriton), each loaded in turn by ``hey``.

    python benchmarks/peers.py --models-dir MODELS_DIR --model NAME [--image FILE]
        [--seconds 8] [--concurrency 1 2 8 32 64] [--servers handserve naive kserve triton]

(``make bench-peers MODELS_DIR=... MODEL=...`` runs it and builds PyTriton's environment first.)

Every server serves the newest version of ``MODELS_DIR/NAME`` on 127.0.0.1, decodes with
``handserve.images.decode_image`` and runs that version's ``model.tflite`` with one thread per
LiteRT interpreter, on as many workers (processes or model instances) as the machine has cores
(2 here), each written as its own docs recommend for a CPU model:

- handserve: ``handserve serve --runtime litert`` with its defaults (a worker per core, BentoML's
  adaptive batching, every middleware on); ``POST /predict?model=NAME`` with the raw image.
- naive: ``../shared/bench/naive_server.py`` (or ``$HANDSERVE_SHARED/bench``; Starlette +
  uvicorn, one image per model call in a thread pool), when that file is there; ``POST /predict``
  with the raw image.
- kserve: ``benchmarks/peers_kserve.py``, a ``kserve.Model`` with a synchronous ``predict`` under
  ``ModelServer(workers=2)``; the V1 protocol, ``{"instances": [{"image": {"b64": ...}}]}``.
- triton: ``benchmarks/peers_triton.py``, PyTriton 0.7.0 (Triton 2.51) with 2 model instances
  and its dynamic batcher (max batch 32, no added delay), in ``.cache/venv-pytriton``
  (``requirements/pytriton.txt``; made here when missing or stale); the Open Inference Protocol
  with Triton's binary tensor extension, the image as one BYTES element.
- floor, only when asked (``--servers ... floor``): ``../shared/bench/floor_service.py``,
  BentoML's floor: ``bentoml serve`` decoding the image and answering a constant, no model, one
  worker; its CPU per request is what BentoML and the decode cost without handserve's layers.

``hey`` (Debian's; closed loop, keep-alive) runs ``--seconds`` per cell at each concurrency.
handserve runs first and last: runs drift by up to 15% on this shared machine, so its figure in
the ratio table is the mean of the two and both are in the full table. Before loading a server
its answer to the image is checked (200, and the same top-1 label as handserve's). Prints the
machine's load average and two markdown tables: every cell, and handserve / peer requests/s.
A benchmark, not a test: compare the ratios within one run, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

from handserve import artifacts
from handserve.runtimes import available_cpus
from service.local_server import answers_200, free_port, stop_server

REPO = Path(__file__).resolve().parents[1]
#: ../shared beside the checkout, or $HANDSERVE_SHARED (as tests/conftest.py finds it).
SHARED = Path(os.environ.get("HANDSERVE_SHARED", REPO.parent / "shared"))
NAIVE = SHARED / "bench" / "naive_server.py"
FLOOR = SHARED / "bench" / "floor_service.py"
PYTRITON_VENV = REPO / ".cache" / "venv-pytriton"
PYTRITON_PINS = REPO / "requirements" / "pytriton.txt"
SERVERS = ("handserve", "naive", "kserve", "triton")
#: Run only when asked (``--servers ... floor``): not a peer but a yardstick, whose answer is a
#: constant (its label is not checked).
EXTRA = ("floor",)
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Cell:
    """One ``hey`` run: requests/s, latency percentiles (ms), answers other than 200 (including
    connection errors), answers in all, and the CPU the server's processes spent per answer (ms;
    user + system of the whole process tree, measured around the run; NaN when not measured)."""

    rps: float
    p50_ms: float
    p99_ms: float
    non_200: int
    answers: int = 0
    cpu_ms: float = float("nan")


def parse_hey(text: str) -> Cell:
    """The summary of ``hey``'s default report.

    Raises:
        ValueError: no "Requests/sec" line (hey failed before it measured anything).
    """
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if rps is None:
        raise ValueError(f"no Requests/sec in hey's output:\n{text[-2000:]}")

    def percentile(p: int) -> float:
        found = re.search(rf"^\s*{p}%+ in ([\d.]+) secs", text, re.M)
        return float(found.group(1)) * 1000 if found else float("nan")

    bad = answers = 0
    statuses = re.search(r"Status code distribution:\n((?:\s+\[\d+\].*\n?)+)", text)
    for code, count in re.findall(
        r"\[(\d+)\]\s+(\d+) responses", statuses.group(1) if statuses else ""
    ):
        answers += int(count)
        bad += int(count) if code != "200" else 0
    errors = re.search(r"Error distribution:\n((?:\s+\[\d+\].*\n?)+)", text)
    bad += sum(int(n) for n in re.findall(r"\[(\d+)\]", errors.group(1) if errors else ""))
    return Cell(float(rps.group(1)), percentile(50), percentile(99), bad, answers)


@dataclass
class Request:
    """What ``hey`` posts to one server: a body file, its content type and extra headers."""

    url: str
    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)


def kserve_body(image: bytes) -> bytes:
    """KServe's V1 predict body with one base64 image, as its image examples send it."""
    return json.dumps(
        {"instances": [{"image": {"b64": base64.b64encode(image).decode()}}]}
    ).encode()


def triton_body(image: bytes) -> tuple[bytes, int]:
    """An Open Inference Protocol request in Triton's binary tensor extension: the JSON header,
    then the BYTES tensor (a 4-byte little-endian length and the file); and the header's length
    (the ``Inference-Header-Content-Length`` Triton reads)."""
    tensor = struct.pack("<I", len(image)) + image
    header = {
        "inputs": [
            {
                "name": "image",
                "shape": [1, 1],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(tensor)},
            }
        ]
    }
    head = json.dumps(header).encode()
    return head + tensor, len(head)


def top_label(server: str, answer: bytes) -> str:
    """The top-1 label in each server's answer."""
    doc = json.loads(answer)
    if server == "kserve":
        return str(doc["predictions"][0]["label"])
    if server == "triton":
        return str(next(o for o in doc["outputs"] if o["name"] == "label")["data"][0])
    if server == "handserve":
        return str(doc["predictions"][0]["label"]) if "predictions" in doc else str(doc["label"])
    return str(doc["label"])


def format_table(rows: Sequence[tuple[str, int, Cell]]) -> str:
    """Every cell, in the order run."""
    lines = [
        "| server | clients | requests/s | p50 ms | p99 ms | non-200 | server CPU ms/request |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for server, c, cell in rows:
        lines.append(
            f"| {server} | {c} | {cell.rps:.1f} | {cell.p50_ms:.1f} | {cell.p99_ms:.1f} "
            f"| {cell.non_200} | {cell.cpu_ms:.2f} |"
        )
    return "\n".join(lines)


def format_ratios(rows: Sequence[tuple[str, int, Cell]], concurrency: Sequence[int]) -> str:
    """handserve / peer requests/s per concurrency; handserve's figure is the mean of its runs
    (``handserve`` and ``handserve (again)``), and p99 in brackets (handserve's mean / peer's)."""
    ours: dict[int, list[Cell]] = {}
    peers: dict[str, dict[int, Cell]] = {}
    for server, c, cell in rows:
        if server.startswith("handserve"):
            ours.setdefault(c, []).append(cell)
        else:
            peers.setdefault(server, {})[c] = cell
    head = "| handserve / peer | " + " | ".join(f"{c}" for c in concurrency) + " |"
    lines = [head, "|---|" + "---:|" * len(concurrency)]
    for peer, cells in peers.items():
        out = []
        for c in concurrency:
            if c not in cells or c not in ours or cells[c].rps == 0:
                out.append("")
                continue
            rps = float(np.mean([x.rps for x in ours[c]]))
            p99 = float(np.mean([x.p99_ms for x in ours[c]]))
            out.append(f"{rps / cells[c].rps:.2f} (p99 {p99:.0f}/{cells[c].p99_ms:.0f})")
        lines.append(f"| {peer} | " + " | ".join(out) + " |")
    return "\n".join(lines)


def sample_image(version_dir: Path) -> tuple[bytes, str]:
    """The export's first sample image as a PNG at the model's size (no file given)."""
    with np.load(version_dir / artifacts.SAMPLES) as samples:
        pixels = samples["x"][0]
    buf = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buf, format="PNG")
    return buf.getvalue(), "image/png"


def pytriton_python() -> Path:
    """PyTriton's side environment, (re)made with the project's uv when it does not hold
    exactly ``requirements/pytriton.txt`` (as scripts/install-test-tools.sh makes the others)."""
    python = PYTRITON_VENV / "bin" / "python"
    stamp = PYTRITON_VENV / "installed-requirements.txt"
    pins = PYTRITON_PINS.read_text()
    if python.exists() and stamp.is_file() and stamp.read_text() == pins:
        return python
    uv = Path(sys.executable).parent / "uv"
    print(
        f"peers: installing PyTriton ({PYTRITON_PINS.name}) into {PYTRITON_VENV}", file=sys.stderr
    )
    shutil.rmtree(PYTRITON_VENV, ignore_errors=True)
    subprocess.run(
        [str(uv), "venv", "--quiet", "--python", "python3", str(PYTRITON_VENV)], check=True
    )
    subprocess.run(
        [str(uv), "pip", "install", "--quiet", "--python", str(python), "-r", str(PYTRITON_PINS)],
        check=True,
    )
    stamp.write_text(pins)
    return python


def libpython_dir(python: Path) -> str:
    """The folder of ``python``'s own libpython (Triton's stub must load that one)."""
    done = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


@dataclass
class Launch:
    argv: list[str]
    ready: str  # a GET that answers 200 once the server serves
    request: Request
    env: dict[str, str] = field(default_factory=dict)


def launches(
    servers: Sequence[str], version_dir: Path, models_dir: Path, image: bytes, ctype: str
) -> dict[str, Launch]:
    """How each server starts and what it is sent, on a free port each."""
    name = version_dir.parent.name
    bindir = Path(sys.executable).parent
    out: dict[str, Launch] = {}
    for server in servers:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        if server == "handserve":
            out[server] = Launch(
                [
                    str(bindir / "handserve"),
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--models-dir",
                    str(models_dir),
                    "--runtime",
                    "litert",
                ],
                f"{base}/readyz",
                Request(f"{base}/predict?model={name}", image, ctype),
            )
        elif server == "naive":
            out[server] = Launch(
                [sys.executable, str(NAIVE), str(version_dir), str(port), "litert"],
                "",  # no readiness route: the first answered request says it
                Request(f"{base}/predict", image, ctype),
            )
        elif server == "floor":
            out[server] = Launch(
                [
                    sys.executable,
                    "-m",
                    "bentoml",
                    "serve",
                    "floor_service:Floor",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                f"{base}/readyz",
                Request(f"{base}/predict", image, ctype),
                {"FLOOR_VERSION_DIR": str(version_dir), "PYTHONPATH": str(FLOOR.parent)},
            )
        elif server == "kserve":
            out[server] = Launch(
                [
                    sys.executable,
                    str(REPO / "benchmarks" / "peers_kserve.py"),
                    str(version_dir),
                    str(port),
                    str(available_cpus()),
                ],
                f"{base}/v1/models/{name}",
                Request(f"{base}/v1/models/{name}:predict", kserve_body(image), "application/json"),
            )
        elif server == "triton":
            python = pytriton_python()
            body, head = triton_body(image)
            lib = libpython_dir(python)
            out[server] = Launch(
                [
                    str(python),
                    str(REPO / "benchmarks" / "peers_triton.py"),
                    str(version_dir),
                    str(port),
                    str(available_cpus()),
                ],
                f"{base}/v2/models/{name}/ready",
                Request(
                    f"{base}/v2/models/{name}/infer",
                    body,
                    "application/octet-stream",
                    {"Inference-Header-Content-Length": str(head)},
                ),
                {
                    "LD_LIBRARY_PATH": os.pathsep.join(
                        filter(None, [lib, os.environ.get("LD_LIBRARY_PATH")])
                    )
                },
            )
    return out


def post(request: Request) -> tuple[int, bytes]:
    req = urllib.request.Request(
        request.url,
        data=request.body,
        headers={"Content-Type": request.content_type, **request.headers},
    )
    try:
        with _DIRECT.open(req, timeout=30) as answer:
            return int(answer.status), answer.read()
    except urllib.error.HTTPError as answer:
        return answer.code, answer.read()


@contextlib.contextmanager
def running(
    server: str, launch: Launch, log: Path, timeout: float = 300
) -> Iterator[subprocess.Popen[bytes]]:
    """``launch`` in a session of its own until it is ready; stopped (the whole group) on exit."""
    env = dict(os.environ, BENTOML_DO_NOT_TRACK="true", **launch.env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            launch.argv,
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{server} exited with {proc.returncode}; log: {log}")
            if launch.ready and answers_200(launch.ready):
                break
            if not launch.ready:
                with contextlib.suppress(OSError):
                    if post(launch.request)[0] == 200:
                        break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{server} not ready after {timeout:.0f} s; log: {log}")
            time.sleep(0.5)
        yield proc
    finally:
        stop_server(proc)


def tree_cpu_s(proc: subprocess.Popen[bytes]) -> float:
    """User + system CPU seconds of ``proc`` and every process below it (those alive now)."""
    total = 0.0
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(proc.pid)
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
    return total


def hey(
    request: Request,
    clients: int,
    seconds: float,
    body_file: Path,
    server: subprocess.Popen[bytes] | None = None,
) -> Cell:
    """One closed-loop run of ``hey``; with ``server``, its CPU per answer too."""
    argv = [
        "hey",
        "-z",
        f"{seconds:g}s",
        "-c",
        str(clients),
        "-m",
        "POST",
        "-T",
        request.content_type,
        "-D",
        str(body_file),
    ]
    for key, value in request.headers.items():
        argv += ["-H", f"{key}: {value}"]
    cpu = tree_cpu_s(server) if server else 0.0
    done = subprocess.run(
        [*argv, request.url], capture_output=True, text=True, timeout=seconds * 4 + 60
    )
    cell = parse_hey(done.stdout + done.stderr)
    if server and cell.answers:
        cell = dataclasses.replace(cell, cpu_ms=(tree_cpu_s(server) - cpu) * 1000 / cell.answers)
    return cell


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models-dir", type=Path, required=True)
    ap.add_argument("--model", required=True, help="model name; its newest version is served")
    ap.add_argument(
        "--image", type=Path, help="the image posted (default: the export's first sample, PNG)"
    )
    ap.add_argument("--seconds", type=float, default=8.0, help="per cell")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 8, 32, 64])
    ap.add_argument(
        "--servers",
        nargs="+",
        choices=SERVERS + EXTRA,
        default=list(SERVERS),
        help="peers to run (handserve always runs first and last)",
    )
    args = ap.parse_args(argv)
    if shutil.which("hey") is None:
        ap.error("hey is not installed: apt-get install hey")
    models_dir = args.models_dir.resolve()
    version_dir = artifacts.version_dir(models_dir, args.model)
    if args.image:
        image = args.image.read_bytes()
        ctype = "image/jpeg" if args.image.suffix.lower() in (".jpg", ".jpeg") else "image/png"
    else:
        image, ctype = sample_image(version_dir)
    peers = [s for s in args.servers if s != "handserve"]
    for name, script in (("naive", NAIVE), ("floor", FLOOR)):
        if name in peers and not script.is_file():
            print(f"peers: no {script}; the {name} server is left out", file=sys.stderr)
            peers.remove(name)
    plan = launches(["handserve", *peers], version_dir, models_dir, image, ctype)
    order = ["handserve", *peers, "handserve"]
    print(
        f"model {args.model} ({version_dir}), image {args.image or 'sample PNG'} "
        f"({len(image)} bytes), "
        f"{args.seconds:g} s per cell, {os.cpu_count()} cores, load average at start "
        f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}"
    )
    rows: list[tuple[str, int, Cell]] = []
    expected: str | None = None
    with tempfile.TemporaryDirectory(prefix="handserve-peers-") as tmp:
        for n, server in enumerate(order):
            label = "handserve (again)" if n and server == "handserve" else server
            launch = plan[server]
            body = Path(tmp) / f"{server}.body"
            body.write_bytes(launch.request.body)
            log = Path(tmp) / f"{server}-{n}.log"
            try:
                with running(server, launch, log) as proc:
                    status, answer = post(launch.request)
                    if status != 200:
                        raise RuntimeError(f"{server} answered {status}: {answer[:300]!r}")
                    got = "" if server == "floor" else top_label(server, answer)
                    expected = expected or got
                    if got and got != expected:
                        raise RuntimeError(f"{server} says {got!r}, handserve {expected!r}")
                    for c in args.concurrency:
                        rows.append((label, c, hey(launch.request, c, args.seconds, body, proc)))
                        print(f"peers: {label} c={c}: {rows[-1][2]}", file=sys.stderr, flush=True)
            except (RuntimeError, TimeoutError) as failed:
                print(
                    f"peers: {label} left out: {failed}\n{log.read_text(errors='replace')[-3000:]}",
                    file=sys.stderr,
                )
    print(f"load average at end {' '.join(Path('/proc/loadavg').read_text().split()[:3])}\n")
    print(format_table(rows))
    print()
    print(format_ratios(rows, args.concurrency))


if __name__ == "__main__":
    main()
