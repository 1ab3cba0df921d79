"""A video file that headless Chromium uses as its camera, made from pictures: the demo
camera's test (``tests/service/test_demo_camera.py``) and benchmark
(``benchmarks/demo_camera.py``) show the page a "signer" this way.

Chromium reads it with ``--use-fake-device-for-media-stream
--use-file-for-fake-video-capture=FILE.y4m`` (and ``--use-fake-ui-for-media-stream`` to grant
the permission), plays it at the file's frame rate and loops it. Like
:mod:`service.local_server`, a tool for tests and benchmarks: nothing in the service imports it
and the Bentos leave it out.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

#: Debian's Chromium (the suite installs it; ``$HANDSERVE_CHROMIUM`` names another).
CHROMIUM = Path(os.environ.get("HANDSERVE_CHROMIUM", "/usr/bin/chromium"))
#: Headless on these machines: no sandbox as root, no GPU, and none of the background
#: connections a closed network refuses.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]


def camera_args(video: Path | str) -> list[str]:
    """Chromium's flags that make ``video`` (a .y4m or .mjpeg file) its camera, granted."""
    return [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={video}",
    ]


#: The camera's picture: a webcam's usual 640x480 at 10 frames a second.
WIDTH, HEIGHT, FPS = 640, 480, 10


def on_frame(img: Image.Image) -> Image.Image:
    """A picture fitted into the camera's frame (black bars, nothing cut), upright and RGB."""
    img = ImageOps.exif_transpose(img) or img
    return ImageOps.pad(img.convert("RGB"), (WIDTH, HEIGHT), color=(0, 0, 0))


def write_y4m(frames: Iterable[Image.Image], path: Path | str, fps: int = FPS) -> Path:
    """Frames (WIDTH x HEIGHT) as a YUV4MPEG2 4:2:0 file, the format Chromium's fake camera
    reads. Chromium takes its samples as BT.601 video ("studio") range, Y 16-235 and chroma
    16-240, whatever the header says (measured: full-range grey 128 came back 130), so Pillow's
    full-range YCbCr is scaled into that range; chroma is averaged over 2x2 blocks."""
    path = Path(path)
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{WIDTH} H{HEIGHT} F{fps}:1 Ip A1:1 C420mpeg2\n".encode())
        for img in frames:
            if img.size != (WIDTH, HEIGHT):
                raise ValueError(f"a frame is {img.size[0]}x{img.size[1]}, not {WIDTH}x{HEIGHT}")
            ycc = np.asarray(img.convert("RGB").convert("YCbCr"), dtype=np.float32)
            out.write(b"FRAME\n")
            out.write((16 + ycc[:, :, 0] * (219 / 255)).round().astype(np.uint8).tobytes())
            for ch in (1, 2):
                plane = ycc[:, :, ch].reshape(HEIGHT // 2, 2, WIDTH // 2, 2).mean(axis=(1, 3))
                plane = 128 + (plane - 128) * (224 / 255)
                out.write(plane.round().astype(np.uint8).tobytes())
    return path


def held(pictures: Iterable[Image.Image], hold: int, gap: int = 0) -> list[Image.Image]:
    """Each picture repeated ``hold`` frames, then ``gap`` empty grey frames (no hand: a letter
    held is released, so the same letter twice is read twice)."""
    blank = Image.new("RGB", (WIDTH, HEIGHT), (40, 40, 40))
    frames: list[Image.Image] = []
    for img in pictures:
        frames += [img] * hold + [blank] * gap
    return frames
