"""A second BentoML service that composes handserve with ``bentoml.depends``, as a user's
preprocessing, ensemble or routing service would: ``bentoml serve tests.service.composed:Front``
with ``HANDSERVE_URL`` pointing at a running handserve (tests/service/test_typed_api.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import bentoml


@bentoml.service(workers=1)
class Front:
    """Answers the best label of an image by calling handserve's typed ``classify``."""

    handserve = bentoml.depends(url=os.environ.get("HANDSERVE_URL", "http://127.0.0.1:3000"))

    @bentoml.api
    async def best_label(self, image: Path, model: str = "digits") -> dict[str, Any]:
        answer = await self.handserve.to_async.classify(image=image, model=model, top_k=1)
        return {"label": answer["predictions"][0]["label"], "via": "bentoml.depends"}
