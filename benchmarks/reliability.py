"""Reliability benchmark: a mixed good/bad load against a real server for a while.

    python benchmarks/reliability.py --models-dir models [--model NAME] [--seconds 600]

Starts ``bentoml serve`` on a free port (or uses ``--url``) and runs ``--concurrency`` clients
in a closed loop for ``--seconds``. Each request is drawn from a mix: good images (PNG and JPEG,
single and batch; each answer is checked against the exported model run directly on the same
decoded pixels) and bad ones (garbage, truncated and bit-flipped images, odd parameters,
unknown models, deep or huge JSON, wrong content types). Prints the requests by status, every
5xx, the wrong answers among the good requests, and the RSS and open file descriptors of the
server's processes at start, after warm-up and at the end. A benchmark, not a test: the numbers
and the time depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import psutil
from PIL import Image

from handserve import artifacts
from handserve.images import decode_image
from handserve.runtimes import LiteRTRuntime
from service.local_server import background_server

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # serve_bench's model picker, as benchmarks.serve_bench

from benchmarks.serve_bench import target  # noqa: E402


def good_images(spec: artifacts.InputContract, n: int = 24) -> list[tuple[bytes, str]]:
    """Small photos of noise and shapes in PNG and JPEG at a few sizes, with their MIME type."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        h, w = int(rng.integers(16, 300)), int(rng.integers(16, 300))
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        arr[h // 4 : h // 2, w // 4 : w // 2] = 255 - arr[h // 4 : h // 2, w // 4 : w // 2]
        img = Image.fromarray(arr).convert("L" if spec.channels == 1 and i % 2 else "RGB")
        fmt, mime = ("PNG", "image/png") if i % 3 else ("JPEG", "image/jpeg")
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        out.append((buf.getvalue(), mime))
    return out


def bad_requests(good: list[tuple[bytes, str]], model: str) -> list[dict[str, Any]]:
    """Refusable requests: each a dict of aiohttp ``post`` arguments plus the path."""
    png = good[1][0]
    raw = {"headers": {"Content-Type": "image/png"}}
    flipped = bytearray(png)
    for i in range(20, len(flipped), 97):
        flipped[i] ^= 0x5A
    return [
        {**raw, "data": b"not an image at all"},
        {**raw, "data": png[: len(png) // 3]},
        {**raw, "data": bytes(flipped)},
        {**raw, "data": b""},
        {**raw, "data": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 1 1\n"},
        {**raw, "data": png, "params": {"model": model, "top_k": "\u00b2"}},
        {**raw, "data": png, "params": {"model": model, "top_k": "9" * 5000}},
        {**raw, "data": png, "params": {"model": model, "version": "99"}},
        {**raw, "data": png, "params": {"model": "no-such-model"}},
        {**raw, "data": png, "params": {"colour": "red"}},
        {"headers": {"Content-Type": "text/plain"}, "data": b"hello"},
        {"headers": {"Content-Type": "application/json"}, "data": b"[" * 50_000},
        {"headers": {"Content-Type": "application/json"}, "data": b'{"image": "@@@"}'},
        {
            "path": "/predict_batch",
            "headers": {"Content-Type": "application/json"},
            "data": json.dumps({"images": ["QQ=="] * 200_000}).encode(),
        },
    ]


#: Two classes whose scores differ by less than this are a tie: the server runs an image in
#: batches of other sizes, or with more threads, than the direct run, and the float sums
#: differ in their last bits (scores of noise images from a small model can tie that closely).
TIE = 1e-5


def expected_scores(version_dir: Path, good: list[tuple[bytes, str]]) -> np.ndarray:
    """The exported model's own scores for each good image, run directly (no server)."""
    man = artifacts.read_manifest(version_dir)
    x = np.stack([decode_image(b, man.input.image_spec) for b, _ in good])
    return LiteRTRuntime(version_dir / artifacts.TFLITE_FP32.path).predict(x)


def is_wrong(scores: np.ndarray, answered: int) -> bool:
    """The served top-1 is not the model's best class, nor tied with it (within :data:`TIE`)."""
    return bool(scores[answered] < scores.max() - TIE)


def tcp_connections(proc: psutil.Process) -> list[Any]:
    """``proc``'s TCP sockets with the psutil the lock holds: psutil 6 renamed
    ``Process.connections`` to ``net_connections``, and kserve (a dev dependency) keeps psutil
    below 6, so both names are tried."""
    method = getattr(proc, "net_connections", None) or proc.connections
    return list(method(kind="tcp"))


def server_processes(port: int) -> list[psutil.Process]:
    """The processes listening on ``port`` (BentoML's workers share the socket)."""
    procs = {}
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error):
            for conn in tcp_connections(proc):
                if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port:
                    procs[proc.pid] = proc
    return list(procs.values())


def snapshot(procs: list[psutil.Process]) -> tuple[float, int]:
    """Total RSS (MiB) and open file descriptors of ``procs``."""
    rss, fds = 0.0, 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            rss += proc.memory_info().rss / 2**20
            fds += proc.num_fds()
    return rss, fds


async def run(args: argparse.Namespace, url: str, model: str, vdir: Path) -> int:
    man = artifacts.read_manifest(vdir)
    good = good_images(man.input)
    want = expected_scores(vdir, good)
    bad = bad_requests(good, model)
    port = int(url.rsplit(":", 1)[1])
    procs = server_processes(port)
    snaps = {"start": snapshot(procs)}
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    wrong, fivexx = [], []
    rng = random.Random(0)
    started = time.monotonic()
    stop = started + args.seconds
    warm_at = started + min(60.0, args.seconds / 5)

    async def client(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < stop:
            if rng.random() < args.bad_fraction:
                req = dict(rng.choice(bad))
                path = req.pop("path", "/predict")
                kind = "bad"
            elif rng.random() < 0.8:
                i = rng.randrange(len(good))
                data, mime = good[i]
                req = {"data": data, "headers": {"Content-Type": mime}, "params": {"model": model}}
                path, kind = "/predict", ("single", [i])
            else:
                idx = [rng.randrange(len(good)) for _ in range(4)]
                b64 = [base64.b64encode(good[i][0]).decode() for i in idx]
                req = {"json": {"images": b64, "model": model}}
                path, kind = "/predict_batch", ("batch", idx)
            try:
                async with session.post(url + path, **req) as resp:
                    body = await resp.read()
                    statuses[resp.status] += 1
                    if resp.status >= 500:
                        fivexx.append((path, resp.status, body[:200]))
                    if kind != "bad" and resp.status == 200:
                        data = json.loads(body)
                        rows = data["results"] if kind[0] == "batch" else [data]
                        for row, i in zip(rows, kind[1], strict=True):
                            if is_wrong(want[i], row["predictions"][0]["index"]):
                                wrong.append((path, i, row["predictions"][0]))
                    elif kind != "bad":
                        errors[f"good request answered {resp.status}"] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors[type(exc).__name__] += 1

    async def sampler() -> None:
        while time.monotonic() < warm_at:
            await asyncio.sleep(0.5)
        snaps["after warm-up"] = snapshot(procs)

    timeout = aiohttp.ClientTimeout(total=60)
    conn = aiohttp.TCPConnector(limit=args.concurrency + 2)
    async with aiohttp.ClientSession(timeout=timeout, connector=conn) as session:
        await asyncio.gather(sampler(), *(client(session) for _ in range(args.concurrency)))
    snaps["end"] = snapshot(procs)
    elapsed = time.monotonic() - started

    total = sum(statuses.values())
    print(
        f"\n{total:,} requests in {elapsed:.0f} s ({total / elapsed:.0f}/s), "
        f"concurrency {args.concurrency}, {100 * args.bad_fraction:.0f}% bad, "
        f"{len(procs)} server processes\n"
    )
    print("| status | requests |\n|---:|---:|")
    for status, n in sorted(statuses.items()):
        print(f"| {status} | {n:,} |")
    print(
        f"\n5xx answers: {len(fivexx)}; wrong answers on good requests: {len(wrong)}; "
        f"client errors: {dict(errors) or 0}"
    )
    for item in (fivexx + wrong)[:10]:
        print("  ", item)
    print("\n| when | RSS MiB (all processes) | open fds |\n|---|---:|---:|")
    for when, (rss, fds) in snaps.items():
        print(f"| {when} | {rss:.0f} | {fds} |")
    warm_rss, end_rss = snaps["after warm-up"][0], snaps["end"][0]
    growth = 100 * (end_rss - warm_rss) / warm_rss if warm_rss else float("nan")
    print(f"\nRSS growth after warm-up: {growth:+.1f}%")
    return 0 if not fivexx and not wrong else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--model", default=None, help="model name (default: first)")
    parser.add_argument("--url", default=None, help="use a running server on this machine")
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--bad-fraction", type=float, default=0.3)
    args = parser.parse_args()
    model, vdir = target(args.models_dir, args.model)
    print(f"model {model}/{vdir.name}, {args.seconds:.0f} s, load {os.getloadavg()[0]:.2f}")
    if args.url:
        return asyncio.run(run(args, args.url, model, vdir))
    with tempfile.TemporaryDirectory() as tmp:
        env = {"BENTOML_HOME": tmp, "HANDSERVE_RUNTIME": LiteRTRuntime.name}
        with background_server(args.models_dir, Path(tmp) / "server.log", env) as (url, _):
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                with contextlib.suppress(Exception):
                    import urllib.request

                    with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                        if r.status == 200:
                            break
                time.sleep(0.5)
            return asyncio.run(run(args, url, model, vdir))


if __name__ == "__main__":
    sys.exit(main())
