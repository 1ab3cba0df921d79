"""The shared preprocessing: every format and mode decodes to the same contract, bad data fails."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import EpsImagePlugin, Image

from handserve.images import (
    ALLOWED_FORMATS,
    ImageDecodeError,
    ImageSpec,
    allowed_formats,
    decode_image,
    open_image,
    to_array,
)

GREY = ImageSpec(28, 28, 1)
RGB = ImageSpec(32, 24, 3)


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


# Every format with every mode it can store (JPEG: no alpha or palette; BMP: no RGBA in Pillow).
FORMAT_MODES = [
    (fmt, mode)
    for fmt in ALLOWED_FORMATS
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
    arr = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    png = _encode(Image.fromarray(arr), "PNG")
    np.testing.assert_array_equal(decode_image(png, GREY), arr[..., None])


def test_allowed_formats_are_the_documented_six_and_known_to_pillow() -> None:
    assert set(ALLOWED_FORMATS) == {"PNG", "JPEG", "WEBP", "BMP", "GIF", "HEIF"}
    Image.init()
    # a typo would silently refuse a format; HEIF comes from pillow-heif (a dependency)
    assert allowed_formats() == ALLOWED_FORMATS
    assert set(ALLOWED_FORMATS) <= set(Image.OPEN)


# -- high bit depth: scaled like the 8-bit picture, never clipped --------------------------------

GRADIENT = np.arange(256, dtype=np.uint8).reshape(16, 16)  # every 8-bit level once


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda a: Image.fromarray(a.astype(np.uint16) * 257), id="I;16"),
        pytest.param(
            lambda a: Image.frombytes("I;16B", (16, 16), (a.astype(">u2") * 257).tobytes()),
            id="I;16B",
        ),
        pytest.param(lambda a: Image.fromarray(a.astype(np.int32) * 257), id="I"),
        pytest.param(lambda a: Image.fromarray(a.astype(np.float32) * 257), id="F"),
    ],
)
def test_high_bit_depth_modes_scale_back_to_the_8bit_values(make) -> None:
    img = make(GRADIENT)
    assert img.mode in ("I;16", "I;16B", "I", "F")
    for spec in (ImageSpec(16, 16, 1), ImageSpec(16, 16, 3)):
        arr = to_array(img, spec)
        assert arr.dtype == np.uint8
        for c in range(spec.channels):
            np.testing.assert_array_equal(arr[:, :, c], GRADIENT)


def test_16bit_values_are_rounded_and_out_of_range_values_clipped() -> None:
    values = np.array([[-5, 0, 128, 129, 385, 65535, 70000, 1 << 30]], dtype=np.int32)
    arr = to_array(Image.fromarray(values), ImageSpec(1, 8, 1))[0, :, 0]
    # round(v * 255 / 65535): 128 -> 0.498 -> 0, 129 -> 0.502 -> 1, 385 -> 1.498 -> 1
    assert arr.tolist() == [0, 0, 0, 1, 1, 255, 255, 255]


def test_16bit_greyscale_png_opens_as_8bit_l() -> None:
    data = _encode(Image.fromarray(GRADIENT.astype(np.uint16) * 257), "PNG")
    img = open_image(data)
    assert img.mode == "L"
    np.testing.assert_array_equal(np.asarray(img), GRADIENT)


def _png16(samples: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG by hand (Pillow cannot write 16-bit RGB): samples is H×W×C ``uint16``."""
    h, w = samples.shape[:2]
    raw = b"".join(b"\x00" + samples[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def test_16bit_rgb_png_decodes_like_the_8bit_rgb_png() -> None:
    rgb8 = np.stack([GRADIENT, 255 - GRADIENT, GRADIENT // 2], axis=-1)
    data16 = _png16(rgb8.astype(np.uint16) * 257, color_type=2)
    spec = ImageSpec(16, 16, 3)
    np.testing.assert_array_equal(
        decode_image(data16, spec), decode_image(_encode(Image.fromarray(rgb8), "PNG"), spec)
    )


# -- format allowlist: refused before any pixel is decoded ---------------------------------------


class _GhostscriptCalled(Exception):
    pass


@pytest.fixture
def no_ghostscript(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any use of Ghostscript fail the test loudly (it is not an ImageDecodeError)."""

    def ghostscript(*_args: object, **_kwargs: object) -> None:
        raise _GhostscriptCalled

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", ghostscript)


def _saved(fmt: str) -> bytes:
    return _encode(Image.new("RGB", (8, 8), (10, 20, 30)), fmt)


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        pytest.param(
            b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\nshowpage\n",
            "EPS/PostScript",
            id="eps",
        ),
        pytest.param(b"\xc5\xd0\xd3\xc6" + bytes(28), "EPS/PostScript", id="dos-eps"),
        pytest.param(_saved("TIFF"), "TIFF", id="tiff"),
        pytest.param(_saved("ICO"), "ICO", id="ico"),
        pytest.param(_saved("PPM"), "PNM", id="ppm"),
        pytest.param(b"%PDF-1.4\n1 0 obj << >> endobj\n%%EOF\n", "PDF", id="pdf"),
    ],
)
def test_formats_outside_the_allowlist_are_refused_by_name(
    data: bytes, kind: str, no_ghostscript: None
) -> None:
    for spec in (GREY, RGB):
        with pytest.raises(ImageDecodeError) as err:
            decode_image(data, spec)
        assert err.value.code == "unsupported_format"
        assert kind in err.value.message
        assert "send PNG, JPEG, WebP, BMP, GIF or HEIC/HEIF" in err.value.message


def test_unrecognised_format_pillow_could_read_is_not_an_image() -> None:
    # TGA has no magic bytes to name it by: refused as not an image in an accepted format.
    with pytest.raises(ImageDecodeError) as err:
        decode_image(_saved("TGA"), GREY)
    assert err.value.code == "not_an_image"
    assert "PNG" in err.value.message


# -- phone photos: a 12 MP JPEG decoded at the size the model needs; HEIC from iPhones ---------


def _phone_jpeg(orientation: int | None = None, size: tuple[int, int] = (4032, 3024)) -> bytes:
    """A 12-megapixel JPEG at quality 90: a smooth picture with noise, as a camera gives."""
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    noisy = np.asarray(img, np.int16) + rng.integers(-12, 13, (size[1], size[0], 3))
    img = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    return _encode(img, "JPEG", quality=90, exif=exif.tobytes())


@pytest.mark.parametrize("orientation", [None, 6])
def test_a_phone_jpeg_is_decoded_at_an_eighth_and_gives_the_full_decodes_pixels(
    orientation: int | None,
) -> None:
    """DCT scaling decodes 1/64 of the pixels; what the model sees moves by about half a grey
    level on average (0.48/255 measured on photos, docs/service.md)."""
    data = _phone_jpeg(orientation)
    spec = ImageSpec(160, 160, 3)
    drafted = open_image(data, size=(160, 160))
    full = open_image(data)
    assert full.size == ((3024, 4032) if orientation == 6 else (4032, 3024))  # upright
    assert drafted.size == (full.size[0] // 8, full.size[1] // 8)  # 1/64 of the pixels decoded
    fast = decode_image(data, spec)
    slow = to_array(full, spec)
    diff = np.abs(fast.astype(np.int16) - slow.astype(np.int16))
    assert diff.mean() < 1.5 and diff.max() < 40, (diff.mean(), diff.max())


def test_the_draft_never_goes_below_the_models_size() -> None:
    """A 1000x600 JPEG for a 224x224 model: 1/2 would be 500x300, 1/4 250x150 is too small in
    height, so it decodes at 1/2; a sideways photo swaps what is too small."""
    data = _phone_jpeg(size=(1000, 600))
    assert open_image(data, size=(224, 224)).size == (500, 300)
    assert open_image(_phone_jpeg(orientation=6, size=(1000, 600)), size=(224, 224)).size == (
        300,
        500,
    )
    assert open_image(data, size=(1000, 600)).size == (1000, 600)  # no reduction possible


def test_the_pixel_cap_counts_the_declared_size_before_any_reduction() -> None:
    data = _phone_jpeg()
    with pytest.raises(ImageDecodeError) as err:
        decode_image(data, ImageSpec(28, 28, 1), max_pixels=4032 * 3024 - 1)
    assert err.value.code == "too_many_pixels"


def _heic(img: Image.Image) -> bytes:
    import pillow_heif

    allowed_formats()  # registers the plugin
    buf = io.BytesIO()
    pillow_heif.from_pillow(img).save(buf, quality=95)
    return buf.getvalue()


def test_an_iphone_heic_photo_decodes_like_its_png() -> None:
    rng = np.random.default_rng(2)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((320, 240), Image.Resampling.BICUBIC)
    data = _heic(img)
    assert data[4:12] in (b"ftypheic", b"ftypmif1")  # an ISO media file, as iPhones write
    heic = decode_image(data, RGB)
    png = decode_image(_encode(img, "PNG"), RGB)
    # HEIC is lossy (HEVC at quality 95): the same picture within a few grey levels
    assert np.abs(heic.astype(np.int16) - png.astype(np.int16)).mean() < 3
    with pytest.raises(ImageDecodeError) as err:
        decode_image(data[:200], RGB)
    assert err.value.code in ("truncated", "not_an_image")


def test_decoded_pixels_reads_the_header_and_counts_a_jpeg_at_its_draft_scale() -> None:
    """What max_request_pixels counts: declared pixels, a JPEG at the DCT scale decoding uses."""
    from handserve.images import ImageSpec, decoded_pixels

    def encoded(fmt: str, size: tuple[int, int]) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", size, (90, 120, 200)).save(buf, format=fmt)
        return buf.getvalue()

    spec = ImageSpec(160, 160, 3)
    assert decoded_pixels(encoded("PNG", (4000, 3000)), spec) == 4000 * 3000
    # libjpeg decodes at 1/8 (500x375), still at least 160 on each side
    assert decoded_pixels(encoded("JPEG", (4000, 3000)), spec) == 500 * 375
    assert decoded_pixels(encoded("JPEG", (4000, 3000)), ImageSpec(2000, 1500, 3)) == 12_000_000
    assert decoded_pixels(b"not an image", spec) == 0
    assert decoded_pixels(encoded("PNG", (4000, 3000))[:100], spec) == 12_000_000  # header only
