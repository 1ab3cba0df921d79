"""Photos as phones make them, through the real server: a 12-megapixel JPEG (some stored
sideways with an EXIF rotation) and an iPhone HEIC get a prediction, and the JPEG the same label
as the full decode would give (the server decodes it at 1/8 scale, tests/unit/test_images.py).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from handserve import artifacts
from handserve.images import allowed_formats, open_image, to_array
from handserve.runtimes import open_runtime
from tests.service.helpers import digit_png

pytestmark = pytest.mark.server


def phone_jpeg(seed: int, orientation: int | None = None) -> bytes:
    """A digit blown up to 4032x3024 with sensor noise, JPEG quality 90 (synthetic)."""
    rng = np.random.default_rng(seed)
    img = Image.open(io.BytesIO(digit_png(seed))).convert("RGB")
    img = img.resize((4032, 3024), Image.Resampling.BILINEAR)
    noisy = np.asarray(img, np.int16) + rng.integers(-10, 11, (3024, 4032, 3))
    img = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    exif = Image.Exif()
    if orientation is not None:
        img = img.transpose(Image.Transpose.ROTATE_90)  # stored sideways, as a camera does
        exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()


def full_decode_label(version: Path, data: bytes) -> str:
    """The label the model gives the fully decoded photo (no DCT scaling), run directly."""
    manifest = artifacts.read_manifest(version)
    runtime = open_runtime(version, manifest, runtime="litert")
    pixels = to_array(open_image(data), manifest.input.image_spec)
    return manifest.labels[int(runtime.predict(pixels[None])[0].argmax())]


@pytest.mark.parametrize(("seed", "orientation"), [(0, None), (1, 6), (2, None), (3, 6)])
def test_a_12_megapixel_jpeg_gets_the_full_decodes_label(server, seed, orientation) -> None:
    data = phone_jpeg(seed, orientation)
    assert len(data) > 500_000  # a real phone-sized upload
    r = requests.post(server.url + "/predict?model=tiny", files={"image": data}, timeout=60)
    assert r.status_code == 200, r.text
    version = server.models_dir / "tiny" / "1"
    assert r.json()["predictions"][0]["label"] == full_decode_label(version, data)


def test_an_iphone_heic_photo_gets_a_prediction(server) -> None:
    import pillow_heif

    assert "HEIF" in allowed_formats()
    img = Image.open(io.BytesIO(digit_png(5))).convert("RGB").resize((280, 280))
    buf = io.BytesIO()
    pillow_heif.from_pillow(img).save(buf, quality=95)
    heic = buf.getvalue()
    r = requests.post(
        server.url + "/predict?model=tiny",
        files={"image": ("IMG_0001.HEIC", heic, "image/heic")},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    png = io.BytesIO()
    img.save(png, format="PNG")
    same = requests.post(server.url + "/predict?model=tiny", files={"image": png.getvalue()})
    assert r.json()["predictions"][0]["label"] == same.json()["predictions"][0]["label"]
    raw = requests.post(
        server.url + "/predict?model=tiny",
        data=heic,
        headers={"Content-Type": "image/heic"},
        timeout=30,
    )
    assert raw.status_code == 200, raw.text
