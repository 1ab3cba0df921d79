"""Serving benchmark: requests/s, images/s, latency percentiles and failures vs concurrency.

    python benchmarks/serve_bench.py --models-dir models [--model NAME] [--seconds 10]

Starts ``bentoml serve service.service:HandServe`` on a free port (or uses ``--url``), then for
single-image ``/predict`` and ``/predict_batch`` (``--batch-images`` per request), and with
``--protocols typed v2-tensor v2-bytes grpc-tensor grpc-bytes`` the same through the typed
BentoML APIs and the Open Inference Protocol over REST and over gRPC (a ``--grpc-port``), runs
a closed loop of N concurrent clients (aiohttp, or a gRPC channel each; one event loop) for
``--seconds`` each, at every ``--concurrency``. Also measures the runtime's in-process ceiling
(LiteRT images/s at batch 1 and at max batch, no HTTP) in the same run, and the mean batch
BentoML formed (from the server's ``handserve_batch_size`` histogram). Prints a Markdown table.
A benchmark, not a test:
numbers depend on the machine and on whatever else runs on it (the load average is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from PIL import Image

from handserve import artifacts
from handserve.images import decode_image
from handserve.runtimes import LiteRTRuntime, available_cpus
from service.local_server import background_server, free_port

REPO = Path(__file__).resolve().parents[1]
GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"


def test_image(shape: tuple[int, int, int], seed: int = 0) -> bytes:
    """A PNG at the model's native size: the decode cost of a typical small upload."""
    rng = np.random.default_rng(seed)
    h, w, c = shape
    arr = rng.integers(0, 256, (h, w) if c == 1 else (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def phone_jpeg(image: bytes, seed: int = 0, *, sideways: bool = False) -> bytes:
    """``image`` blown up to a 12-megapixel (4032x3024) JPEG at quality 90 with a little sensor
    noise: the upload a phone camera makes (synthetic: the picture is the small image's).
    ``sideways``: stored turned, with the EXIF rotation (6) that stands it upright, as phones
    store portrait photos."""
    rng = np.random.default_rng(seed)
    img = (
        Image.open(io.BytesIO(image)).convert("RGB").resize((4032, 3024), Image.Resampling.BICUBIC)
    )
    arr = np.asarray(img, np.int16) + rng.integers(-6, 7, (3024, 4032, 3), np.int16)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    exif = Image.Exif()
    if sideways:
        img = img.transpose(Image.Transpose.ROTATE_90)
        exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()


def ceiling(version_dir: Path, max_batch: int, seconds: float = 3.0) -> dict[int, float]:
    """In-process LiteRT images/s at batch 1 and ``max_batch`` (the server's upper bound)."""
    man = artifacts.read_manifest(version_dir)
    rt = LiteRTRuntime(version_dir / artifacts.TFLITE_FP32.path, num_threads=available_cpus())
    out = {}
    for n in (1, max_batch):
        x = np.zeros((n, *man.input.shape), np.uint8)
        rt.predict(x)
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            rt.predict(x)
            done += n
        out[n] = done / (time.perf_counter() - start)
    return out


@contextlib.contextmanager
def server(models_dir: Path, env_extra: dict[str, str]):
    log_path = Path(tempfile.gettempdir()) / f"serve_bench_{os.getpid()}.log"
    with background_server(models_dir, log_path, env_extra) as (url, proc):
        yield url, proc


async def wait_ready(url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with s.get(url + "/readyz") as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.3)
    raise TimeoutError(f"{url} not ready")


async def batch_hist(session: aiohttp.ClientSession, url: str) -> tuple[float, float]:
    """(sum, count) of handserve_batch_size over all models."""
    async with session.get(url + "/metrics") as r:
        text = await r.text()
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("handserve_batch_size_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("handserve_batch_size_count"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


def request_maker(
    protocol: str, model: str, image: bytes, n: int, ctype: str, pixels: np.ndarray
) -> Any:
    """A function returning ``(path, session.post keyword arguments)`` for one request.

    ``image``: the service's own API, multipart (``/predict`` or ``/predict_batch``).
    ``typed``: the same multipart request to the typed BentoML APIs (``/classify`` or
    ``/classify_batch``).
    ``v2-tensor``: the Open Inference Protocol with the decoded pixels as a binary UINT8
    tensor. ``v2-bytes``: the same protocol with the encoded file as a BYTES element; both
    with binary outputs, as tritonclient sends them by default.
    """
    if protocol in ("image", "typed"):
        if protocol == "image":
            path = "/predict" if n == 1 else "/predict_batch"
        else:  # the typed BentoML APIs: the same request through @bentoml.api
            path = "/classify" if n == 1 else "/classify_batch"

        def make_form() -> tuple[str, dict[str, Any]]:
            form = aiohttp.FormData()
            form.add_field("model", model)
            for i in range(n):
                name = "images" if n > 1 else "image"
                form.add_field(name, image, filename=f"{i}", content_type=ctype)
            return path, {"data": form}

        return make_form
    if protocol == "v2-tensor":
        x = np.repeat(pixels[None], n, axis=0).astype(np.uint8)
        tensor: dict[str, Any] = {"name": "image", "shape": list(x.shape), "datatype": "UINT8"}
        raw = x.tobytes()
    else:
        tensor = {"name": "image_bytes", "shape": [n], "datatype": "BYTES"}
        raw = (len(image).to_bytes(4, "little") + image) * n
    tensor["parameters"] = {"binary_data_size": len(raw)}
    head = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
    body = head + raw
    headers = {"Inference-Header-Content-Length": str(len(head))}
    path = f"/v2/models/{model}/infer"
    return lambda: (path, {"data": body, "headers": headers})


class WorkerSplit:
    """Each worker process's share of the server's CPU time over one cell, in percent (``-``
    with ``--url``): whether the load was spread over the workers or sat on one."""

    def __init__(self, server_pid: int | None) -> None:
        import psutil

        self.workers: list[Any] = []
        if server_pid is not None:
            with contextlib.suppress(psutil.Error):
                children = psutil.Process(server_pid).children(recursive=True)
                self.workers = [
                    p for p in children if "_bentoml_impl.worker" in " ".join(p.cmdline())
                ]
        self.before = self._times()

    def _times(self) -> list[float]:
        out = []
        for p in self.workers:
            try:
                t = p.cpu_times()
                out.append(t.user + t.system)
            except Exception:
                out.append(float("nan"))
        return out

    def done(self) -> str:
        used = [b - a for a, b in zip(self.before, self._times(), strict=True)]
        total = sum(used)
        if not used or not total > 0:
            return "-"
        return "/".join(f"{100 * u / total:.0f}" for u in sorted(used, reverse=True))


def target(models_dir: Path, name: str | None) -> tuple[str, Path]:
    """The model to measure (``name``, or the first in ``models_dir``) and its newest version;
    exits with the reason when there is none."""
    try:
        vdir = artifacts.first_version_dir(models_dir, name)
    except artifacts.ArtifactError as exc:
        raise SystemExit(str(exc)) from None
    return vdir.parent.name, vdir


def grpc_request(protocol: str, model: str, image: bytes, n: int, pixels: np.ndarray) -> bytes:
    """A serialized ``ModelInferRequest`` as ``tritonclient.grpc`` sends it: the values in
    ``raw_input_contents`` (UINT8 pixels, or the file as one length-prefixed BYTES element)."""
    from tritonclient.grpc import service_pb2 as pb

    request = pb.ModelInferRequest(model_name=model)
    if protocol == "grpc-tensor":
        x = np.repeat(pixels[None], n, axis=0).astype(np.uint8)
        request.inputs.add(name="image", datatype="UINT8", shape=list(x.shape))
        request.raw_input_contents.append(x.tobytes())
    else:
        request.inputs.add(name="image_bytes", datatype="BYTES", shape=[n])
        request.raw_input_contents.append((len(image).to_bytes(4, "little") + image) * n)
    return bytes(request.SerializeToString())


async def run_grpc_cell(
    url: str, address: str, request: bytes, concurrency: int, seconds: float, batch_images: int
) -> dict[str, Any]:
    """:func:`run_cell` over gRPC: ``concurrency`` clients, each with a channel of its own (one
    HTTP/2 connection, as each HTTP client has one), sending the same serialized request."""
    import grpc

    latencies: list[float] = []
    statuses: dict[str, int] = {}
    # grpc shares one connection among a process's channels to the same address unless each
    # has a subchannel pool of its own: without this, every client would sit on one worker.
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(address, options=options) for _ in range(concurrency)]
    async with aiohttp.ClientSession() as session:
        s0, c0 = await batch_hist(session, url)
        stop = time.perf_counter() + seconds

        async def client(channel: Any) -> None:
            call = channel.unary_unary(GRPC_INFER)
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    await call(request, timeout=60)
                    latencies.append(time.perf_counter() - t0)
                    statuses["OK"] = statuses.get("OK", 0) + 1
                except grpc.aio.AioRpcError as exc:
                    statuses[exc.code().name] = statuses.get(exc.code().name, 0) + 1

        start = time.perf_counter()
        await asyncio.gather(*(client(ch) for ch in channels))
        elapsed = time.perf_counter() - start
        s1, c1 = await batch_hist(session, url)
    for channel in channels:
        await channel.close()
    return _row(latencies, elapsed, batch_images, statuses, (s1 - s0, c1 - c0))


def _row(
    latencies: list[float],
    elapsed: float,
    batch_images: int,
    statuses: dict[Any, int],
    batches: tuple[float, float],
) -> dict[str, Any]:
    lat = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    ok = len(latencies)
    return {
        "rps": ok / elapsed,
        "ips": ok * batch_images / elapsed,
        "p50": float(np.percentile(lat, 50)),
        "p95": float(np.percentile(lat, 95)),
        "p99": float(np.percentile(lat, 99)),
        "ok": ok,
        "failures": sum(statuses.values()) - ok,
        "mean_batch": batches[0] / batches[1] if batches[1] > 0 else float("nan"),
        "statuses": statuses,
    }


async def run_cell(
    url: str, make: Any, concurrency: int, seconds: float, batch_images: int
) -> dict[str, Any]:
    """A closed loop of ``concurrency`` clients for ``seconds``; returns the row's numbers."""
    latencies: list[float] = []
    failures = 0
    statuses: dict[int, int] = {}
    conn = aiohttp.TCPConnector(limit=concurrency + 4)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        s0, c0 = await batch_hist(session, url)
        stop = time.perf_counter() + seconds

        async def client() -> None:
            nonlocal failures
            while time.perf_counter() < stop:
                path, kwargs = make()
                t0 = time.perf_counter()
                try:
                    async with session.post(url + path, **kwargs) as r:
                        await r.read()
                        statuses[r.status] = statuses.get(r.status, 0) + 1
                        if r.status == 200:
                            latencies.append(time.perf_counter() - t0)
                        else:
                            failures += 1
                except (TimeoutError, aiohttp.ClientError):
                    failures += 1

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        s1, c1 = await batch_hist(session, url)
    return _row(latencies, elapsed, batch_images, statuses, (s1 - s0, c1 - c0))


async def main_async(
    args: argparse.Namespace, url: str, model: str, image: bytes, pixels: np.ndarray
) -> list:
    await wait_ready(url)
    rows = []
    ctype = (
        "image/jpeg"
        if args.image and args.image.suffix.lower() in (".jpg", ".jpeg")
        else "image/png"
    )
    for protocol in args.protocols:
        for batch_images in [n for n in (1, args.batch_images) if n not in args.skip]:
            if protocol.startswith("grpc"):
                request = grpc_request(protocol, model, image, batch_images, pixels)
            else:
                make = request_maker(protocol, model, image, batch_images, ctype, pixels)
            for c in args.concurrency:
                split = WorkerSplit(getattr(args, "server_pid", None))
                if protocol.startswith("grpc"):
                    row = await run_grpc_cell(
                        url, args.grpc, request, c, args.seconds, batch_images
                    )
                else:
                    row = await run_cell(url, make, c, args.seconds, batch_images)
                row["split"] = split.done()
                size = "single" if batch_images == 1 else f"batch×{batch_images}"
                row.update(kind=size if protocol == "image" else f"{protocol} {size}", c=c)
                print(
                    f"  {row['kind']:>9} c={c:<3} {row['rps']:7.1f} req/s "
                    f"{row['ips']:7.1f} img/s p50 {row['p50']:.1f} ms p99 {row['p99']:.1f} ms "
                    f"failures {row['failures']} statuses {row['statuses']}",
                    flush=True,
                )
                rows.append(row)
    if args.phone_jpeg:  # the same single-image cells with a 12 MP JPEG of the same picture
        phone = phone_jpeg(image)
        make = request_maker("image", model, phone, 1, "image/jpeg", pixels)
        for c in args.concurrency:
            split = WorkerSplit(getattr(args, "server_pid", None))
            row = await run_cell(url, make, c, args.seconds, 1)
            row["split"] = split.done()
            row.update(kind=f"12 MP JPEG ({len(phone) / 1e6:.1f} MB)", c=c)
            print(f"  {row['kind']} c={c:<3} {row['rps']:7.1f} req/s", flush=True)
            rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--model", default=None, help="model name (default: first)")
    parser.add_argument("--url", default=None, help="benchmark a running server instead")
    parser.add_argument("--seconds", type=float, default=10.0, help="per cell")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--batch-images", type=int, default=16)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--env", nargs="*", default=[], help="extra KEY=VALUE for the server")
    parser.add_argument(
        "--image", type=Path, default=None, help="send this file (default: a PNG of noise)"
    )
    parser.add_argument(
        "--skip", type=int, nargs="*", default=[], help="images per request to skip (1: single)"
    )
    parser.add_argument(
        "--phone-jpeg",
        action="store_true",
        help="also send the image as a 12-megapixel JPEG (single requests, same concurrency)",
    )
    parser.add_argument(
        "--protocols",
        nargs="+",
        choices=["image", "typed", "v2-tensor", "v2-bytes", "grpc-tensor", "grpc-bytes"],
        default=["image"],
        help="image: /predict(_batch); typed: /classify(_batch), the @bentoml.api endpoints; "
        "v2-tensor / v2-bytes: /v2/models/NAME/infer; grpc-tensor / grpc-bytes: ModelInfer",
    )
    parser.add_argument(
        "--grpc", default=None, help="with --url: the running server's gRPC host:port"
    )
    args = parser.parse_args()

    model, vdir = target(args.models_dir, args.model)
    man = artifacts.read_manifest(vdir)
    image = args.image.read_bytes() if args.image else test_image(man.input.shape)
    pixels = decode_image(image, man.input.image_spec)
    print(
        f"model {model}/{vdir.name} input {man.input.shape}, load average "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    )
    ceil = ceiling(vdir, args.max_batch_size)
    env = dict(kv.split("=", 1) for kv in args.env)
    env.setdefault("HANDSERVE_MAX_BATCH_SIZE", str(args.max_batch_size))
    if any(p.startswith("grpc") for p in args.protocols) and not args.url:
        port = free_port()
        env.update(HANDSERVE_GRPC_PORT=str(port), HANDSERVE_GRPC_HOST="127.0.0.1")
        args.grpc = f"127.0.0.1:{port}"
    if args.url:
        rows = asyncio.run(main_async(args, args.url, model, image, pixels))
    else:
        with server(args.models_dir, env) as (url, proc):
            args.server_pid = proc.pid
            rows = asyncio.run(main_async(args, url, model, image, pixels))
    print(f"\nload average after: {os.getloadavg()[0]:.2f}\n")
    print(
        "| request | concurrency | requests/s | images/s | p50 ms | p95 ms | p99 ms "
        "| failures | mean batch | worker CPU % |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(
            f"| {r['kind']} | {r['c']} | {r['rps']:.1f} | {r['ips']:.1f} | {r['p50']:.1f} "
            f"| {r['p95']:.1f} | {r['p99']:.1f} | {r['failures']} | {r['mean_batch']:.1f} "
            f"| {r['split']} |"
        )
    for n, ips in ceil.items():
        print(f"| in-process LiteRT, batch {n} | - | - | {ips:.0f} | - | - | - | - | {n} | - |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
