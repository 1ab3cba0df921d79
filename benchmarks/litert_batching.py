"""Does LiteRT batching pay, run as the server runs it (one thread per interpreter)?

    python benchmarks/litert_batching.py VERSION_DIR [--batches 1 8 32] [--rounds 5]
        [--seconds 2] [--threads 1]

One interpreter per batch size on the export's ``model.tflite`` with ``--threads`` threads
(handserve's default is 1 per interpreter, one interpreter per request in flight), random pixels,
no decode, no HTTP. The batch sizes take turns for ``--rounds`` rounds of ``--seconds`` each, so
drift on a shared machine hits them alike, and each is measured two ways: images per second of
wall time, and images per second of this process's CPU time (with one thread the interpreter runs
in the calling thread, so CPU time is the work itself, unmoved by other processes' load). Prints
a markdown table: the median over rounds, and the ratio to batch 1. ``../shared/bench/ceiling.py``
measures the same with a thread per core.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from handserve import artifacts


def runner(version_dir: Path, batch: int, threads: int) -> Callable[[], None]:
    """One call of a ``batch``-image input on an interpreter of its own."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(version_dir / artifacts.TFLITE_FP32.path), num_threads=threads)
    d = it.get_input_details()[0]
    it.resize_tensor_input(d["index"], [batch, *d["shape"][1:]])
    it.allocate_tensors()
    x = np.random.default_rng(0).integers(0, 256, (batch, *d["shape"][1:])).astype(np.float32)

    def call() -> None:
        it.set_tensor(d["index"], x)
        it.invoke()

    call()
    return call


def measure(call: Callable[[], None], batch: int, seconds: float) -> tuple[float, float]:
    """Images per wall second and per CPU second over ``seconds``."""
    done, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        call()
        done += batch
    return done / (time.perf_counter() - t0), done / max(time.process_time() - c0, 1e-9)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("version_dir", type=Path)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    calls = {n: runner(args.version_dir, n, args.threads) for n in args.batches}
    wall: dict[int, list[float]] = {n: [] for n in args.batches}
    cpu: dict[int, list[float]] = {n: [] for n in args.batches}
    for _ in range(args.rounds):
        for n in args.batches:
            w, c = measure(calls[n], n, args.seconds)
            wall[n].append(w)
            cpu[n].append(c)
    first = args.batches[0]
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(
        f"{args.version_dir}, {args.threads} thread(s) per interpreter, {args.rounds} rounds of "
        f"{args.seconds:g} s, load average {load}\n"
    )
    print("| batch | images/s (wall) | × batch 1 | images per CPU-second | × batch 1 |")
    print("|---:|---:|---:|---:|---:|")
    for n in args.batches:
        w, c = float(np.median(wall[n])), float(np.median(cpu[n]))
        w1, c1 = float(np.median(wall[first])), float(np.median(cpu[first]))
        print(f"| {n} | {w:.0f} | {w / w1:.2f} | {c:.0f} | {c / c1:.2f} |")


if __name__ == "__main__":
    main()
