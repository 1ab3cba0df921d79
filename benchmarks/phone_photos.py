"""Phone-sized photos: the decoder's DCT scaling against the full decode, on real photos.

    python benchmarks/phone_photos.py --models-dir models --model fruits \\
        --data-dir ../shared/data/fruits/valid [--limit N]

The course's fruit photos are at most 256 px, so each is blown up to a 12-megapixel
(4032x3024) JPEG at quality 90 with a little sensor noise, every fourth stored sideways with an
EXIF rotation as phones do: a synthetic large-photo set, not real phone photos. Each is decoded
three ways for the model: as the code did before (full decode, one-pass bilinear resize), fully
with the two-step resize (``to_array(open_image(data))``), and at the smallest DCT scale not
below the model's size (``decode_image``: what serving and training's folder loader do now),
and run on the version's ``model.tflite``. Prints top-1 agreement,
accuracy of each, the mean pixel difference and the decode images/s of each (the cost training
pays per photo of a folder, and the server per upload). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.serve_accuracy import test_files  # noqa: E402
from benchmarks.serve_bench import phone_jpeg  # noqa: E402
from handserve import artifacts  # noqa: E402
from handserve.images import ImageSpec, decode_image, open_image, to_array  # noqa: E402
from handserve.runtimes import LiteRTRuntime, open_runtime  # noqa: E402


def before(data: bytes, spec: ImageSpec) -> np.ndarray:
    """The decoder as it was: every pixel decoded, then one bilinear resize."""
    img = open_image(data)
    img = img.convert("L" if spec.channels == 1 else "RGB")
    img = img.resize((spec.width, spec.height), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--model", required=True)
    parser.add_argument("--data-dir", type=Path, required=True, help="folder of class folders")
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    version = artifacts.version_dir(args.models_dir, args.model)
    manifest = artifacts.load_verified(version)
    spec = manifest.input.image_spec
    runtime = open_runtime(version, manifest, runtime=LiteRTRuntime.name)
    files = test_files(args.data_dir)[: args.limit]
    t0 = time.perf_counter()
    photos = [phone_jpeg(p.read_bytes(), i, sideways=i % 4 == 3) for i, (p, _) in enumerate(files)]
    made = time.perf_counter() - t0
    truth = np.array([manifest.labels.index(c) for _, c in files])
    sizes = [len(p) for p in photos]
    print(f"{manifest.name}/{manifest.version}, input {spec.height}x{spec.width}x{spec.channels}")
    print(
        f"{len(photos)} synthetic 4032x3024 JPEGs (q90) from {args.data_dir}, "
        f"{np.mean(sizes) / 1e6:.2f} MB each, every 4th with EXIF rotation; made in {made:.0f} s\n"
    )
    ways = {
        "before: full decode, one-pass resize": lambda p: before(p, spec),
        "full decode, two-step resize": lambda p: to_array(open_image(p), spec),
        "now: DCT-scaled decode, two-step resize": lambda p: decode_image(p, spec),
    }
    pixels, seconds = {}, {}
    for name, decode in ways.items():
        start = time.perf_counter()
        pixels[name] = np.stack([decode(p) for p in photos])
        seconds[name] = time.perf_counter() - start
    tops = {name: runtime.predict(x).argmax(1) for name, x in pixels.items()}
    names = list(ways)
    first, last = names[0], names[-1]
    print(
        "| decode | images/s | ms per photo | top-1 accuracy | agrees with before "
        "| mean abs dpixel |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name in ways:
        rate, ms = len(photos) / seconds[name], 1000 * seconds[name] / len(photos)
        acc, agree = np.mean(tops[name] == truth), np.mean(tops[name] == tops[first])
        diff = np.abs(pixels[name].astype(np.int16) - pixels[first].astype(np.int16)).mean()
        print(f"| {name} | {rate:.1f} | {ms:.1f} | {acc:.4f} | {agree:.4f} | {diff:.2f}/255 |")
    changed = int((tops[first] != tops[last]).sum())
    print(f"\n{changed} of {len(photos)} photos change top-1 between before and now")
    return 0


if __name__ == "__main__":
    sys.exit(main())
