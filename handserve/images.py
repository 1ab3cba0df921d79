"""Image decoding and resizing shared by training's folder loader and the service.

One implementation on both sides means a photo is turned into model input exactly the same way
when the model is trained on a folder and when it is served, so the two cannot drift. This module
imports Pillow and NumPy only (no TensorFlow), so a LiteRT-only server can use it.

The steps, in order: decode (first frame of an animation), apply the EXIF orientation, composite
any alpha channel on white, convert to the model's colour mode, resize to the model's native size.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Extensions the folder loader picks up (lower case, with the dot).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif")

#: Default cap on decoded pixels: a 40-megapixel photo passes, a decompression bomb does not.
DEFAULT_MAX_PIXELS = 40_000_000

COLOR_MODES = {"grayscale": 1, "rgb": 3}


class ImageDecodeError(ValueError):
    """An input that is not a usable image.

    Attributes:
        code: a short machine-readable reason (``empty``, ``not_an_image``, ``truncated``,
            ``too_many_pixels``), used as the error code in the service and as a metric label.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ImageSpec:
    """The size and colour mode a model takes: what every image is converted to."""

    height: int
    width: int
    channels: int  # 1 (grayscale) or 3 (rgb)

    @property
    def color_mode(self) -> str:
        return "grayscale" if self.channels == 1 else "rgb"


def open_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode bytes into an upright RGB or L Pillow image, refusing what is not a sane image.

    Args:
        data: the encoded file (PNG, JPEG, WebP, BMP, GIF, ...).
        max_pixels: refuse images whose width × height exceeds this before decoding the pixels,
            so a small file that expands to gigabytes (a decompression bomb) costs nothing.

    Raises:
        ImageDecodeError: with ``code`` saying what was wrong.
    """
    if not data:
        raise ImageDecodeError("empty", "the image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow warns (not raises) between MAX_IMAGE_PIXELS and 2×; we enforce our own cap.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    "too_many_pixels",
                    f"the image is {width}x{height} = {width * height:,} pixels, "
                    f"over the limit of {max_pixels:,}",
                )
            img.seek(0)  # first frame of an animated GIF/WebP
            img.load()
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError("too_many_pixels", f"the image has too many pixels: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(
            "not_an_image", "the data is not an image Pillow can read (PNG, JPEG, WebP, BMP, GIF)"
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError("truncated", f"the image is truncated or corrupt: {exc}") from exc
    # A broken EXIF block should not lose an otherwise good image.
    with contextlib.suppress(Exception):
        img = ImageOps.exif_transpose(img) or img
    return _flatten_alpha(img)


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
    """Convert colour mode and resize (bilinear) to ``spec``: a ``uint8`` array of H×W×C."""
    mode = "L" if spec.channels == 1 else "RGB"
    if img.mode != mode:
        img = img.convert(mode)
    if img.size != (spec.width, spec.height):
        img = img.resize((spec.width, spec.height), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


def decode_image(
    data: bytes, spec: ImageSpec, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Bytes to model input: the whole shared preprocessing in one call.

    Args:
        data: the encoded image file.
        spec: the model's native height, width and channels.
        max_pixels: decompression-bomb cap, see :func:`open_image`.

    Returns:
        ``uint8`` array of shape ``(spec.height, spec.width, spec.channels)``, values 0–255.

    Raises:
        ImageDecodeError: the data is empty, not an image, truncated or too large.
    """
    return to_array(open_image(data, max_pixels=max_pixels), spec)


def encode_png(array: np.ndarray) -> bytes:
    """Encode an H×W×C ``uint8`` array as PNG (used for sample images stored with exports)."""
    arr = np.asarray(array, dtype=np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()
