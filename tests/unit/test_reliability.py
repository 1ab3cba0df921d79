"""benchmarks/reliability.py's verdict on a served answer, without a server."""

from __future__ import annotations

import numpy as np

from benchmarks import reliability


def test_a_tie_within_float_noise_is_not_a_wrong_answer() -> None:
    """The server runs an image in batches of other sizes (joined calls) or on more threads
    than the direct run; the last bits of the scores differ, and a near-tie can flip."""
    scores = np.array([0.4, 0.4 - reliability.TIE / 10, 0.2], np.float32)
    assert not reliability.is_wrong(scores, 0)
    assert not reliability.is_wrong(scores, 1)  # tied with the best within TIE
    assert reliability.is_wrong(scores, 2)  # a real miss
    assert reliability.is_wrong(np.array([0.5, 0.5 - 10 * reliability.TIE]), 1)
