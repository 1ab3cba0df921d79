"""The demo camera's frame rates and agreement, in headless Chromium against a real server.

    python benchmarks/demo_camera.py --models-dir models --model NAME \\
        [--photos ../shared/data/asl_photos] [--seconds 30] [--url URL]

Makes a fake camera video (``service.fake_camera``: real hand photos from ``--photos``, each
held a second with empty frames between them, or the repository's digit examples when no
photos are given), starts ``bentoml serve`` on ``--models-dir`` (or uses ``--url``), opens
``/demo/`` in Debian's Chromium (``--disable-gpu``: LiteRT.js on its WebAssembly CPU path) with
that video as its camera and runs the camera mode for ``--seconds`` in each mode, with the
page's frame cap lifted (``?camera_fps=``). Prints a Markdown table: frames a second end to end
(frame taken, classified, letter shown), the frame-to-letter latency the page shows (median and
p90), and in ``both`` mode the share of frames where both found a hand and gave the same top
class. A benchmark, not a test: the numbers depend on the machine and on whatever else runs on
it (the load average is printed).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from service.fake_camera import CHROMIUM, CHROMIUM_ARGS, camera_args, held, on_frame, write_y4m
from service.local_server import background_server, wait_ready

REPO = Path(__file__).resolve().parents[1]
MODES = ("server", "device", "both")


def _video(photos: Path | None, out: Path) -> Path:
    if photos is not None:
        pictures = [on_frame(Image.open(p)) for p in sorted(photos.glob("*/*.jpg"))[::9][:8]]
        return write_y4m(held(pictures, 10, 4), out)
    digits = [on_frame(Image.open(REPO / "examples" / "images" / f"digit_{d}.png")) for d in (3, 7)]
    return write_y4m(held(digits, 10), out)


@contextlib.contextmanager
def _server(args: argparse.Namespace) -> Iterator[str]:
    if args.url:
        yield args.url.rstrip("/")
        return
    with tempfile.TemporaryDirectory() as home:
        env = {"BENTOML_HOME": home, "HANDSERVE_RUNTIME": "litert"}
        with background_server(args.models_dir, Path(home) / "server.log", env) as (url, proc):
            wait_ready(url, proc, timeout=300)
            yield url


def _run_mode(page: Any, mode: str, seconds: float) -> dict[str, Any]:
    page.select_option("#camera-mode", mode)
    page.click("#camera-start")
    page.wait_for_selector("#camera-panel[data-state='running']")
    # Warm: the first frames load the model (device) or the connection (server).
    page.wait_for_function(
        "Number(document.getElementById('camera-panel').dataset.frames||0) > 3", timeout=300_000
    )
    page.evaluate(
        "() => { const c = window.handserveCamera; "
        "for (const k in c.counts) c.counts[k] = 0; c.timings.length = 0; }"
    )
    start = time.monotonic()
    time.sleep(seconds)
    state = page.evaluate(
        "() => ({counts: {...window.handserveCamera.counts}, "
        "timings: [...window.handserveCamera.timings]})"
    )
    elapsed = time.monotonic() - start
    page.click("#camera-stop")
    counts, timings = state["counts"], sorted(state["timings"])  # the last 1,000 frames
    frames = max(counts["server"], counts["device"])
    return {
        "mode": mode,
        "frames": frames,
        "fps": frames / elapsed,
        "p50": statistics.median(timings) if timings else float("nan"),
        "p90": timings[int(0.9 * (len(timings) - 1))] if timings else float("nan"),
        "no_hand": counts["noHand"],
        "both": counts["both"],
        "agree": counts["agree"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--model", required=True, help="the model the camera reads")
    parser.add_argument("--photos", type=Path, help="a folder of class folders of hand photos")
    parser.add_argument("--seconds", type=float, default=30.0, help="per mode")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--url", help="an already running server")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp, _server(args) as url:
        video = _video(args.photos, Path(tmp) / "camera.y4m")
        rows = []
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=str(CHROMIUM),
                headless=True,
                args=[*CHROMIUM_ARGS, *camera_args(video)],
            )
            try:
                for mode in args.modes:
                    page = browser.new_page()
                    page.goto(f"{url}/demo/?camera_fps=100")
                    page.wait_for_selector("#model-select[data-loaded='true']")
                    page.wait_for_selector("#camera-panel[data-ready='true']")
                    page.select_option("#model-select", args.model)
                    rows.append(_run_mode(page, mode, args.seconds))
                    page.close()
            finally:
                browser.close()
    load = os.getloadavg()[0]
    source = args.photos or "digit examples"
    print(
        f"\nModel {args.model}, camera video from {source}, {args.seconds:.0f} s per mode, "
        f"load average {load:.1f} on {os.cpu_count()} CPUs\n"
    )
    print(
        "| mode | frames/s | frame to letter p50 (ms) | p90 (ms) | frames | no hand | agreement |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        agree = (
            f"{r['agree']}/{r['both']} ({100 * r['agree'] / r['both']:.1f}%)" if r["both"] else ""
        )
        print(
            f"| {r['mode']} | {r['fps']:.1f} | {r['p50']:.0f} | {r['p90']:.0f} | {r['frames']} "
            f"| {r['no_hand']} | {agree} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
