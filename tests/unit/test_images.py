"""The shared preprocessing: every format and mode decodes to the same contract, bad data fails."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from handserve.images import ImageDecodeError, ImageSpec, decode_image, encode_png, open_image

GREY = ImageSpec(28, 28, 1)
RGB = ImageSpec(32, 24, 3)


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


# Every format with every mode it can store (JPEG: no alpha or palette; BMP: no RGBA in Pillow).
FORMAT_MODES = [
    (fmt, mode)
    for fmt in ("PNG", "JPEG", "WEBP", "BMP", "GIF")
    for mode in ("RGB", "L", "RGBA", "P")
    if not (fmt == "JPEG" and mode in ("RGBA", "P")) and not (fmt == "BMP" and mode == "RGBA")
]


@pytest.mark.parametrize(("fmt", "mode"), FORMAT_MODES)
def test_every_format_and_mode_decodes_to_the_contract(fmt: str, mode: str) -> None:
    img = Image.new("RGB", (50, 40), (200, 30, 30)).convert(mode)
    for spec in (GREY, RGB):
        arr = decode_image(_encode(img, fmt), spec)
        assert arr.shape == (spec.height, spec.width, spec.channels)
        assert arr.dtype == np.uint8


def test_alpha_is_composited_on_white() -> None:
    img = Image.new("RGBA", (10, 10), (0, 0, 0, 0))  # fully transparent black
    arr = decode_image(_encode(img, "PNG"), ImageSpec(10, 10, 3))
    assert arr.min() == 255  # became white, not black


def test_exif_orientation_is_applied() -> None:
    img = Image.new("L", (40, 20), 0)  # landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    data = _encode(img, "JPEG", exif=exif.tobytes())
    assert open_image(data).size == (20, 40)  # upright is portrait


def test_gif_first_frame_is_used() -> None:
    frames = [Image.new("L", (8, 8), 10), Image.new("L", (8, 8), 250)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    arr = decode_image(buf.getvalue(), ImageSpec(8, 8, 1))
    assert arr.mean() < 50


def test_resize_is_deterministic_and_keeps_constant_images() -> None:
    img = Image.new("L", (100, 70), 123)
    data = _encode(img, "PNG")
    a, b = decode_image(data, GREY), decode_image(data, GREY)
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) == {123}


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty"),
        (b"this is not an image at all", "not_an_image"),
    ],
)
def test_bad_bytes_are_refused_with_a_code(data: bytes, code: str) -> None:
    with pytest.raises(ImageDecodeError) as err:
        decode_image(data, GREY)
    assert err.value.code == code


def test_truncated_image_is_refused() -> None:
    data = _encode(Image.new("RGB", (64, 64), (1, 2, 3)), "PNG")
    with pytest.raises(ImageDecodeError) as err:
        decode_image(data[: len(data) // 2], GREY)
    assert err.value.code == "truncated"


def test_decompression_bomb_is_refused_before_decoding() -> None:
    # A 1x1 PNG whose header claims W x H pixels: refused from the header alone.
    for side, limit in ((5_000, 1_000_000), (50_000, 40_000_000)):
        bomb = _png_claiming(side, side)
        with pytest.raises(ImageDecodeError) as err:
            decode_image(bomb, GREY, max_pixels=limit)
        assert err.value.code == "too_many_pixels"
        assert "pixels" in err.value.message


def _png_claiming(width: int, height: int) -> bytes:
    data = _encode(Image.new("L", (1, 1)), "PNG")
    start = data.find(b"IHDR")
    body = b"IHDR" + struct.pack(">II", width, height) + data[start + 12 : start + 17]
    crc = struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
    return data[:start] + body + crc + data[start + 21 :]


def test_png_round_trip() -> None:
    arr = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28, 1)
    np.testing.assert_array_equal(decode_image(encode_png(arr), GREY), arr)
