"""The demo camera's frame rates and agreement, in headless Chromium against a real server.

    python benchmarks/demo_camera.py --models-dir models --model NAME \\
        [--photos ../shared/data/asl_photos] [--seconds 30] [--url URL] \\
        [--modes server device landmarks both] [--word HELLO --source davidlee --screenshot PNG]

Makes a fake camera video (``service.fake_camera``: real hand photos from ``--photos``, one of
each letter, each letter's next photo in turn, each held a second with empty frames between
them, or the repository's digit examples when no photos are given), starts ``bentoml serve`` on
``--models-dir`` (or uses ``--url``), opens ``/demo/`` in Debian's Chromium (``--disable-gpu``:
LiteRT.js on its WebAssembly CPU path) with that video as its camera and runs the camera mode for
``--seconds`` in each mode, with the page's frame cap lifted (``?camera_fps=``). ``landmarks``
(the browser finds the hand, the server reads its landmark tensors) runs only for a hand-feature
model. Prints a Markdown table: frames a second end to end (frame taken, classified, letter
shown), the frame-to-letter latency the page shows (median and p90), and in ``both`` mode the
share of frames where both found a hand and gave the same top class. A benchmark, not a test:
the numbers depend on the machine and on whatever else runs on it (the load average is printed).

With ``--word``, the video instead spells that word (for each letter, of the photos of
``--photos/LETTER/`` whose names start with ``--source``, the one the server reads as that letter
most surely), and ``--screenshot PNG`` saves the camera card (as a 256-colour PNG) the moment the
page has spelled the word in the last mode, as docs/images/demo-camera-asl.png was made.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests
from PIL import Image

from service.fake_camera import CHROMIUM, CHROMIUM_ARGS, camera_args, held, on_frame, write_y4m
from service.local_server import background_server, wait_ready

REPO = Path(__file__).resolve().parents[1]
MODES = ("server", "device", "landmarks", "both")


def _video(photos: Path | None, out: Path) -> Path:
    if photos is not None:
        letters = sorted(p for p in photos.iterdir() if p.is_dir())
        # one photo a letter: each letter's next photo in turn (so every photographer's)
        pictures = [
            on_frame(Image.open(shots[i % len(shots)]))
            for i, letter in enumerate(letters)
            if (shots := sorted(letter.glob("*.jpg")))
        ]
        return write_y4m(held(pictures, 10, 4), out)
    digits = [on_frame(Image.open(REPO / "examples" / "images" / f"digit_{d}.png")) for d in (3, 7)]
    return write_y4m(held(digits, 10), out)


def _word_video(url: str, model: str, photos: Path, word: str, source: str, out: Path) -> Path:
    """``word`` held to the camera, a letter every two seconds, each the photo the server reads
    as that letter with the highest score (the page must be able to spell it)."""
    pictures = []
    for letter in word:
        best: tuple[float, Image.Image] | None = None
        for photo in sorted((photos / letter).glob(f"{source}*.jpg")):
            img = on_frame(Image.open(photo))
            buf = io.BytesIO()
            img.save(buf, "PNG")
            resp = requests.post(
                f"{url}/predict",
                files={"file": ("frame.png", buf.getvalue(), "image/png")},
                data={"model": model, "top_k": "1"},
                timeout=120,
            )
            if resp.status_code != 200:
                continue
            top = resp.json()["predictions"][0]
            if top["label"] == letter and (best is None or top["score"] > best[0]):
                best = (top["score"], img)
        if best is None:
            raise SystemExit(f"no photo of {photos / letter}/{source}* is read as {letter}")
        pictures.append(best[1])
    # 2 s a letter: the letter is added after the page's 0.8 s hold, and still in view a second
    # later when the screenshot is taken
    return write_y4m(held(pictures, 20, 4), out)


def _screenshot(page: Any, word: str, path: Path) -> None:
    """The camera card the moment it has spelled ``word`` (the text cleared as its first letter
    comes after a gap), as a 256-colour PNG (a screenshot's few colours: a fifth of the size)."""
    letter = "document.getElementById('camera-letter').dataset.label"
    page.wait_for_function(f"{letter} === ''", timeout=120_000)  # a gap between letters
    page.wait_for_function(f"{letter} === {word[0]!r}", timeout=120_000)  # not yet held long
    page.click("#camera-clear-text")
    page.wait_for_function(
        f"document.getElementById('camera-text').dataset.text === {word!r}", timeout=120_000
    )
    png = page.locator("#camera-panel").screenshot()
    Image.open(io.BytesIO(png)).convert("RGB").quantize(256).save(path, optimize=True)


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


def _hand_features(url: str, model: str) -> bool:
    listing = requests.get(f"{url}/models", timeout=30).json()["models"]
    served = next((m for m in listing if m["name"] == model), None)
    if served is None:
        raise SystemExit(f"the server does not serve {model!r}: {[m['name'] for m in listing]}")
    return bool(served["input"].get("type") == "hand_features")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--model", required=True, help="the model the camera reads")
    parser.add_argument("--photos", type=Path, help="a folder of class folders of hand photos")
    parser.add_argument("--seconds", type=float, default=30.0, help="per mode")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--url", help="an already running server")
    parser.add_argument("--word", help="with --photos: the video spells this word")
    parser.add_argument("--source", default="", help="with --word: the photos' name prefix")
    parser.add_argument("--screenshot", type=Path, help="with --word: the camera card, as PNG")
    args = parser.parse_args(argv)
    if (args.word or args.screenshot) and not (args.photos and args.word):
        parser.error("--word and --screenshot need --photos and --word")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp, _server(args) as url:
        modes = [m for m in args.modes if m != "landmarks" or _hand_features(url, args.model)]
        if args.word:
            video = _word_video(
                url, args.model, args.photos, args.word, args.source, Path(tmp) / "word.y4m"
            )
        else:
            video = _video(args.photos, Path(tmp) / "camera.y4m")
        rows = []
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=str(CHROMIUM),
                headless=True,
                args=[*CHROMIUM_ARGS, *camera_args(video)],
            )
            try:
                for mode in modes:
                    page = browser.new_page(viewport={"width": 1100, "height": 1300})
                    page.goto(f"{url}/demo/?camera_fps=100")
                    page.wait_for_selector("#model-select[data-loaded='true']")
                    page.wait_for_selector("#camera-panel[data-ready='true']")
                    page.select_option("#model-select", args.model)
                    rows.append(_run_mode(page, mode, args.seconds))
                    if args.screenshot and mode == modes[-1]:
                        page.click("#camera-start")
                        _screenshot(page, args.word, args.screenshot)
                    page.close()
            finally:
                browser.close()
    load = os.getloadavg()
    source = f"the word {args.word} from " if args.word else ""
    source += str(args.photos or "digit examples")
    print(
        f"\nModel {args.model}, camera video from {source}, {args.seconds:.0f} s per mode, "
        f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} CPUs\n"
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
