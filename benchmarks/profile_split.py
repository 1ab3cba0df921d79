"""Where a server worker's time goes, from a py-spy profile: the top self-time frames and the
share of each layer (model call, decode, metrics, middlewares, framework, HTTP).

    py-spy record -d 25 -r 100 --format raw -o worker.raw -p WORKER_PID   # under load
    python benchmarks/profile_split.py worker.raw [--top 25]

docs/benchmarks/peers.md has the run (``hey -c 8`` on one worker of handserve and of KServe).
Samples whose innermost frame is a wait are left out: idle worker threads
(``Condition.wait``), the event loop in ``epoll`` (uvloop's ``Runner.run``), KServe's watchdog
thread, and uvicorn's ``RequestResponseCycle.send``, whose time is the socket write and, on a
loaded machine, the wait to run again after that write wakes the client (py-spy counts a thread
that is runnable but not running as busy). The rest is roughly proportional to CPU time: read
the shares as "of the Python-visible work", not as milliseconds.
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

#: Innermost frames that are waits, not work (see the docstring).
WAITS = (
    "Condition.wait (threading.py)",
    "Runner.run (asyncio/runners.py)",
    "select (selectors.py)",
    "Connection._recv (multiprocessing/connection.py)",
    "RequestResponseCycle.send (uvicorn/",
)
#: Layers, checked from the innermost frame outwards: a sample counts for the first layer one
#: of whose substrings its frame holds (frames read ``func (package/module.py)``).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("LiteRT (invoke, set_tensor)", ("ai_edge_litert",)),
    ("pixel-budget header peek (decoded_pixels)", ("decoded_pixels",)),
    (
        "image decode (Pillow, handserve.images, NumPy)",
        ("PIL/", "handserve/images.py", "numpy", "decode_all"),
    ),
    (
        "metrics (prometheus_client, timing middlewares)",
        ("prometheus_client", "record_batch", "instruments.py", "timing_asgi", "PrintTimings"),
    ),
    ("logging and warnings", ("logging/", "warnings.py", "linecache")),
    ("JSON", ("json/", "render", "orjson")),
    (
        "handserve's ASGI layer (Front; JSONErrors, Deadline, CloseToRebalance)",
        ("service/front.py", "service/errors.py", "service/deadline.py", "service/balance.py"),
    ),
    ("handserve's own request path (service/, handserve/)", ("service/", "handserve/")),
    ("KServe", ("kserve/",)),
    ("BentoML", ("bentoml",)),
    ("FastAPI, Starlette, pydantic", ("fastapi/", "starlette/", "pydantic")),
    ("uvicorn, httptools", ("uvicorn/", "httptools")),
)
OTHER = "asyncio, anyio, other"


def short(frame: str) -> str:
    """``func (path:line)`` -> ``func (package/module.py)``."""
    found = re.match(r"(.*) \((.*?):\d+\)$", frame)
    if not found:
        return frame
    func, path = found.groups()
    path = re.sub(r".*site-packages/", "", path)
    path = re.sub(r".*/lib/python3\.\d+/", "", path)
    path = re.sub(r".*/(service|handserve|benchmarks)/", r"\1/", path)
    return f"{func} ({path})"


def read_raw(path: Path) -> list[tuple[list[str], int]]:
    """py-spy's raw (collapsed) format: ``frame;frame;... COUNT`` per line, outermost first."""
    stacks = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        stack, count = line.rsplit(" ", 1)
        frames = [short(f) for f in stack.split(";") if "(" in f]  # drops thread names
        if frames:
            stacks.append((frames, int(count)))
    return stacks


def split(
    stacks: list[tuple[list[str], int]],
) -> tuple[int, collections.Counter, collections.Counter]:
    """Samples doing work, their innermost frames, and their layers."""
    leaves: collections.Counter = collections.Counter()
    layers: collections.Counter = collections.Counter()
    work = 0
    for frames, n in stacks:
        if frames[-1].startswith(WAITS):
            continue
        work += n
        leaves[frames[-1]] += n
        layer = next(
            (
                name
                for frame in reversed(frames)
                for name, parts in LAYERS
                if any(part in frame for part in parts)
            ),
            OTHER,
        )
        layers[layer] += n
    return work, leaves, layers


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("raw", type=Path, help="py-spy record --format raw output")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args(argv)
    stacks = read_raw(args.raw)
    total = sum(n for _, n in stacks)
    work, leaves, layers = split(stacks)
    print(f"{args.raw}: {total} samples, {work} doing work\n")
    print("| layer | share of work |\n|---|---:|")
    for name in [*(name for name, _ in LAYERS), OTHER]:
        print(f"| {name} | {100 * layers[name] / max(work, 1):.1f}% |")
    print(f"\n| self time, top {args.top} | share of work |\n|---|---:|")
    for frame, n in leaves.most_common(args.top):
        print(f"| `{frame}` | {100 * n / max(work, 1):.1f}% |")


if __name__ == "__main__":
    main()
