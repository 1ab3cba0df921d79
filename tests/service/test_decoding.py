"""What an outside probe of the service found in the shared decoder (handserve.images).

Every uploaded image goes through :func:`handserve.images.decode_image`, so these are tested
there (not through ``service.*``): a 16-bit PNG must give the model the same pixels as the 8-bit
PNG of the same picture (it used to be clipped to black and white, answered with a 200), and a
PostScript file must be refused before Pillow could hand it to Ghostscript.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import EpsImagePlugin, Image

from handserve.images import ImageDecodeError, ImageSpec, decode_image

SPEC = ImageSpec(28, 28, 1)

#: A minimal but well-formed EPS: Pillow's EPS plugin opens it and would render it with Ghostscript.
EPS = (
    b"%!PS-Adobe-3.0 EPSF-3.0\n"
    b"%%BoundingBox: 0 0 10 10\n"
    b"%%EndComments\n"
    b"newpath 0 0 moveto 10 10 lineto stroke\n"
    b"showpage\n"
    b"%%EOF\n"
)


def _digit() -> np.ndarray:
    """An 8-bit greyscale 28x28 picture using every grey level (a gradient plus a bright bar)."""
    arr = (np.arange(28 * 28, dtype=np.int64) * 7 % 256).astype(np.uint8).reshape(28, 28)
    arr[10:18, 12:16] = 255
    return arr


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_16bit_png_decodes_like_the_8bit_png_it_was_made_from() -> None:
    arr = _digit()
    wide = Image.fromarray(arr.astype(np.uint16) * 257)  # 0..255 -> 0..65535, the usual widening
    assert wide.mode == "I;16"
    data16 = _png(wide)
    assert Image.open(io.BytesIO(data16)).mode.startswith("I")  # really stored as 16 bits
    expected = decode_image(_png(Image.fromarray(arr)), SPEC)
    got = decode_image(data16, SPEC)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    np.testing.assert_array_equal(got[:, :, 0], arr)  # exact: value * 257 scales back exactly


class _GhostscriptCalled(Exception):
    """Raised by the stand-in for Ghostscript: reaching it means PostScript would have run."""


def test_eps_is_refused_without_touching_ghostscript(monkeypatch: pytest.MonkeyPatch) -> None:
    def ghostscript(*_args: object, **_kwargs: object) -> None:
        raise _GhostscriptCalled

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", ghostscript)
    with pytest.raises(ImageDecodeError) as err:
        decode_image(EPS, SPEC)
    assert err.value.code == "unsupported_format"
    assert "PostScript" in err.value.message
    assert "PNG" in err.value.message  # says what to send instead
