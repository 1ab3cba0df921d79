"""Top-k ranking, written once: the ``/predict`` answer, the v2 classification strings and the
LiteRT example all rank a row of scores with :func:`top_k`."""

from __future__ import annotations

from typing import Any

import numpy as np


def top_k(scores: np.ndarray, labels: list[str], k: int) -> list[dict[str, Any]]:
    """The ``k`` best classes of one row of ``scores``, highest first, as
    ``{"label", "index", "score"}``; ``k`` is clamped to 1..len(labels).

    Ties keep index order (a stable sort), so equal scores always rank the same way, on every
    route and every worker.
    """
    k = max(1, min(int(k), len(labels)))
    order = np.argsort(-np.asarray(scores), kind="stable")[:k]
    return [{"label": labels[i], "index": int(i), "score": float(scores[i])} for i in order]
