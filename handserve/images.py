"""Image decoding and resizing shared by training's folder loader and the service.

One implementation on both sides means a photo is turned into model input exactly the same way
when the model is trained on a folder and when it is served, so the two cannot drift. This module
imports Pillow and NumPy only (no TensorFlow), so a LiteRT-only server can use it.

The steps, in order: check the format is on the allowlist and the declared size against the
pixel cap, decode (first frame of an animation; a JPEG directly at the smallest of 1/2, 1/4 or
1/8 scale that is not below the model's size, when the caller gives it), scale high-bit-depth
pixels to 8 bits, apply the EXIF orientation, composite any alpha channel on white, convert to
the model's colour mode, resize to the model's native size.

A phone photo is 12 megapixels; a model takes a few thousand pixels. Decoding the JPEG at 1/8
scale in the DCT domain (libjpeg's scaling, Pillow's ``Image.draft``) took the decode and resize
of a 4032×3024 photo from 119 ms to 14 ms here, with a mean pixel difference of 0.48/255 against
the full decode (docs/service.md, "Phone photos"). Training's folder loader and the server both
decode through :func:`decode_image`, so they shrink the same way.
"""

from __future__ import annotations

import contextlib
import functools
import io
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from handserve import hands  # NumPy and Pillow only; LiteRT loads with the first detector

#: Extensions the folder loader picks up (lower case, with the dot).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".heic", ".heif")

#: Pillow format names the decoder accepts; every other plugin is never even tried, so an upload
#: cannot reach Ghostscript (EPS), libtiff's many codecs or any rarely exercised reader. TIFF is
#: left out on purpose: the documented formats are these, and TIFF's float and 32-bit sample
#: formats have no agreed 0-255 meaning. HEIF (iPhone photos, ``.heic``) is read by
#: ``pillow-heif``'s plugin, registered on first use (:func:`allowed_formats`).
ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "HEIF")

#: Resizing by more than this factor first shrinks by an integer factor (``Image.reduce``), then
#: resamples the rest bilinearly: far cheaper for a large PNG, and within a rounding step of the
#: one-pass resize (Pillow's ``reducing_gap``).
REDUCING_GAP = 3.0

#: Leading bytes of formats Pillow (or a user) might expect to work, to name them in the refusal.
#: Only for the message: refusal itself comes from ``Image.open(..., formats=ALLOWED_FORMATS)``.
_KNOWN_REFUSED: tuple[tuple[bytes, str], ...] = (
    (b"%!PS", "EPS/PostScript"),
    (b"\xc5\xd0\xd3\xc6", "EPS/PostScript"),  # DOS EPS binary header
    (b"%PDF", "PDF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xffO\xffQ", "JPEG 2000"),
    (b"qoif", "QOI"),
    (b"DDS ", "DDS"),
    (b"icns", "ICNS"),
    (b"\x89HDF", "HDF5"),
)

#: Default cap on decoded pixels: a 40-megapixel photo passes, a decompression bomb does not.
DEFAULT_MAX_PIXELS = 40_000_000


def color_mode_for(channels: int) -> str:
    """``"grayscale"`` for one channel, else ``"rgb"``: the one place the two are tied."""
    return "grayscale" if channels == 1 else "rgb"


def channels_for(color_mode: str) -> int:
    """1 for ``"grayscale"``, else 3: :func:`color_mode_for` the other way round."""
    return 1 if color_mode == "grayscale" else 3


class ImageDecodeError(ValueError):
    """An input that is not a usable image.

    Attributes:
        code: a short machine-readable reason (``empty``, ``not_an_image``,
            ``unsupported_format``, ``truncated``, ``too_many_pixels``), used as the error code
            in the service and as a metric label.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


#: ``ImageSpec.crop`` values: ``"hand"`` crops the image to its hand first (handserve.hands).
CROPS = ("hand",)


@dataclass(frozen=True)
class ImageSpec:
    """The size and colour mode a model takes: what every image is converted to."""

    height: int
    width: int
    channels: int  # 1 (grayscale) or 3 (rgb)
    crop: str | None = None  # "hand": crop to the hand before the resize (handserve.hands)

    @property
    def color_mode(self) -> str:
        return color_mode_for(self.channels)


@functools.cache
def allowed_formats() -> tuple[str, ...]:
    """:data:`ALLOWED_FORMATS` that this Pillow can read: HEIF once ``pillow-heif`` registered
    its plugin (a dependency of the project; without it HEIC is refused with a 415 saying so)."""
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
    except ImportError:
        pass
    Image.init()  # Pillow loads its own plugins lazily: before this, Image.OPEN may lack them
    return tuple(f for f in ALLOWED_FORMATS if f in Image.OPEN)


def _accepted() -> str:
    names = {"WEBP": "WebP", "HEIF": "HEIC/HEIF"}
    formats = [names.get(f, f) for f in allowed_formats()]
    return ", ".join(formats[:-1]) + " or " + formats[-1]


def open_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    size: tuple[int, int] | None = None,
) -> Image.Image:
    """Decode bytes into an upright 8-bit RGB or L Pillow image, refusing what is not a sane image.

    Only :func:`allowed_formats` are tried, before any pixel is decoded; 16-bit and other
    high-bit-depth images are scaled to 0-255 like the 8-bit version of the same picture.

    Args:
        data: the encoded file (PNG, JPEG, WebP, BMP, GIF or HEIC/HEIF).
        max_pixels: refuse images whose width × height exceeds this before decoding the pixels,
            so a small file that expands to gigabytes (a decompression bomb) costs nothing. The
            declared size counts, before any reduction.
        size: the ``(width, height)`` the image will be resized to, upright. A JPEG is then
            decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps it at least this big
            (after its EXIF rotation), so the returned image may be smaller than declared.

    Raises:
        ImageDecodeError: with ``code`` saying what was wrong.
    """
    if not data:
        raise ImageDecodeError("empty", "the image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow warns (not raises) between MAX_IMAGE_PIXELS and 2×; we enforce our own cap.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data), formats=allowed_formats())
            width, height = img.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    "too_many_pixels",
                    f"the image is {width}x{height} = {width * height:,} pixels, "
                    f"over the limit of {max_pixels:,}",
                )
            img.seek(0)  # first frame of an animated GIF/WebP
            if size is not None and img.format == "JPEG":
                _draft(img, size)
            img.load()
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError("too_many_pixels", f"the image has too many pixels: {exc}") from exc
    except UnidentifiedImageError as exc:
        kind = _refused_kind(data)
        if kind == "HEIC/HEIF" and "HEIF" in allowed_formats():  # ours, but it would not open
            raise ImageDecodeError(
                "truncated", "the HEIC/HEIF image is truncated or corrupt"
            ) from exc
        if kind is not None:
            raise ImageDecodeError(
                "unsupported_format", f"{kind} is not accepted; send {_accepted()}"
            ) from exc
        raise ImageDecodeError(
            "not_an_image", f"the data is not an image in an accepted format ({_accepted()})"
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError("truncated", f"the image is truncated or corrupt: {exc}") from exc
    img = _to_8bit(img)
    # A broken EXIF block should not lose an otherwise good image. In place: without it
    # Pillow returns a copy of every image, even one with no orientation to apply.
    with contextlib.suppress(Exception):
        ImageOps.exif_transpose(img, in_place=True)
    return _flatten_alpha(img)


def decoded_pixels(data: bytes, spec: ImageSpec) -> int:
    """How many pixels :func:`decode_image` will decode for ``data``, from its header alone.

    The declared width × height, or for a JPEG the size libjpeg will decode it at (the DCT
    scale :func:`decode_image` asks for, 1/2 to 1/8 per side): what a request costs the server
    in decoding, checked before any pixel is decoded (the service's ``max_request_pixels``).
    0 when the header cannot be read: decoding then refuses the image with the reason.
    """
    if data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR" and len(data) >= 24:
        # A PNG's size is at a fixed place (its first chunk): read there, it costs 1 µs where
        # Pillow's open costs 30 (a third of serving a small image), and a PNG has no draft.
        width, height = struct.unpack(">II", data[16:24])
        return int(width) * int(height)
    try:
        img = Image.open(io.BytesIO(data), formats=allowed_formats())
        if img.format == "JPEG":
            _draft(img, _decode_size(spec))
        width, height = img.size
    except Exception:  # not an image, truncated: decode_image says which
        return 0
    return int(width) * int(height)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _decode_size(spec: ImageSpec) -> tuple[int, int]:
    """The ``(width, height)`` an image is decoded for: the model's, or with a hand crop the
    detector's when larger (a small hand keeps its pixels)."""
    if spec.crop is None:
        return (spec.width, spec.height)
    return (max(spec.width, hands.DETECT_SIZE[0]), max(spec.height, hands.DETECT_SIZE[1]))


def _draft(img: Image.Image, size: tuple[int, int]) -> None:
    """Ask libjpeg for the smallest scale not below ``size`` (as the image will stand upright).

    A photo stored sideways (EXIF orientation 5-8) is turned after decoding, so the model's
    width is the file's height then. The mode stays the file's: the colour conversion is the
    one every decode uses.
    """
    width, height = size
    with contextlib.suppress(Exception):  # a broken EXIF block: no rotation, as exif_transpose
        if img.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8):
            width, height = height, width
    img.draft(img.mode, (width, height))


def _refused_kind(data: bytes) -> str | None:
    """Name the format of a refused file from its first bytes, or None when it is not one we know.

    Cheap and never decodes anything: it only makes the refusal say what was sent.
    """
    head = data[:16]
    for magic, kind in _KNOWN_REFUSED:
        if head.startswith(magic):
            return kind
    if head[:4] in (b"\x00\x00\x01\x00", b"\x00\x00\x02\x00") and head[4:6] != b"\x00\x00":
        # ICO/CUR: reserved 0, type, then a non-zero icon count (a TGA header can start alike)
        return "ICO" if head[2] == 1 else "CUR"
    if head[4:8] == b"ftyp":  # ISO media file: size, "ftyp", brand
        brand = head[8:12]
        if brand.startswith(b"avi"):
            return "AVIF"
        if brand.startswith((b"hei", b"mif1", b"msf1", b"hev")):
            return "HEIC/HEIF"
    if len(head) >= 3 and head[0:1] == b"P" and head[1:2] in b"1234567" and head[2:3].isspace():
        return "PNM (PBM/PGM/PPM)"
    return None


def _to_8bit(img: Image.Image) -> Image.Image:
    """Scale a high-bit-depth image (``I;16*``, ``I``, ``F``) to 8-bit ``L``.

    Pillow's ``convert("L")`` clips these modes instead of scaling them, so a 16-bit PNG of a digit
    turned into a black-and-white mess that the model still answered. The values are taken on the
    16-bit scale (0-65535, what PNG stores and what Pillow keeps for ``I`` and ``F`` converted from
    it) and mapped to ``round(value * 255 / 65535)``: exactly the 8-bit picture a 16-bit one was
    widened from by ``value * 257``. Values outside 0-65535 are clipped. 16-bit RGB(A) PNGs need
    nothing here: Pillow already opens them as 8-bit ``RGB``/``RGBA`` (top byte of each sample).
    """
    if not (img.mode.startswith("I") or img.mode == "F"):
        return img
    arr = np.asarray(img)
    if arr.dtype.kind == "f":
        scaled = np.rint(np.clip(np.nan_to_num(arr, nan=0.0), 0, 65535) * (255 / 65535))
        out = scaled.astype(np.uint8)
    else:
        # uint32 holds 65535 * 255 + 32767; in place, so a 40-megapixel image costs ~160 MB once.
        wide = (arr if arr.dtype.kind == "u" else np.clip(arr, 0, 65535)).astype(np.uint32)
        wide *= 255
        wide += 32767
        wide //= 65535
        out = wide.astype(np.uint8)
    return Image.fromarray(out)


def _flatten_alpha(img: Image.Image) -> Image.Image:
    """Composite transparency on white: a drawn digit or a cut-out hand has no background."""
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA") or (img.mode == "RGB" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    return img


def to_array(img: Image.Image, spec: ImageSpec) -> np.ndarray:
    """Convert colour mode and resize (bilinear) to ``spec``: a ``uint8`` array of H×W×C.

    High-bit-depth images are scaled, not clipped (see :func:`open_image`), also when the image did
    not come from :func:`open_image`.
    """
    img = _to_8bit(img)
    mode = "L" if spec.channels == 1 else "RGB"
    if img.mode != mode:
        img = img.convert(mode)
    if img.size != (spec.width, spec.height):
        img = img.resize(
            (spec.width, spec.height), Image.Resampling.BILINEAR, reducing_gap=REDUCING_GAP
        )
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


def decode_image(
    data: bytes, spec: ImageSpec, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Bytes to model input: the whole shared preprocessing in one call.

    A spec with ``crop="hand"`` crops the image to its hand before the resize, by the one crop
    rule of :mod:`handserve.hands`; the JPEG is then decoded at the size the detector needs
    (:data:`handserve.hands.DETECT_SIZE`), not the model's, so a small hand keeps its pixels.

    Args:
        data: the encoded image file.
        spec: the model's native height, width and channels, and its crop.
        max_pixels: decompression-bomb cap, see :func:`open_image`.

    Returns:
        ``uint8`` array of shape ``(spec.height, spec.width, spec.channels)``, values 0–255.

    Raises:
        ImageDecodeError: the data is empty, not an image, in a refused format, truncated or too
            large; with a hand crop, code ``no_hand`` when no hand was found.
        handserve.hands.HandModelsMissing: a hand crop without the detector's files installed.
    """
    if spec.crop is None:
        return to_array(open_image(data, max_pixels=max_pixels, size=_decode_size(spec)), spec)
    if spec.crop not in CROPS:
        raise ValueError(f"unknown crop {spec.crop!r}; known: {', '.join(CROPS)}")
    img = open_image(data, max_pixels=max_pixels, size=_decode_size(spec))
    try:
        return to_array(hands.crop_hand(img), spec)
    except hands.NoHandError as exc:
        raise ImageDecodeError(exc.code, str(exc)) from exc
