"""The strict whole-number rule, written once: ASCII digits only, and not too many of them.

Every integer that arrives as text (a ``Content-Length`` or v2 header, a ``top_k`` or
``version`` field, a ``NAME=VERSION`` pin, a ``--devices`` count) goes through
:func:`ascii_int`. ``str.isdigit`` accepts superscripts and other scripts' digits (``²``,
``٣``) that ``int()`` then refuses or reads differently, ``int()`` accepts ``+5``, ``1_0`` and
spaces, and a string of thousands of digits costs time to parse (Python refuses over 4,300): a
request or a setting that relied on any of them was never meant as a number.
"""

from __future__ import annotations

#: Enough digits for any byte count, version or count here, far below Python's parse limit.
MAX_DIGITS = 18


def ascii_int(text: str, max_digits: int = MAX_DIGITS) -> int | None:
    """``text`` as a non-negative integer if it is 1 to ``max_digits`` ASCII digits, else None."""
    if 0 < len(text) <= max_digits and text.isascii() and text.isdigit():
        return int(text)
    return None
