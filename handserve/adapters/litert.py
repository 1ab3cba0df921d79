"""LiteRT's private interpreter API, used here and nowhere else.

ai-edge-litert's Python ``Interpreter`` has no public way to list a model's operators; its
``_get_ops_details()`` does (one dict per node, with ``op_name``). The export reads it to refuse
Flex (TensorFlow) and custom operators (:mod:`training.litert`). An ai-edge-litert upgrade that
moves it fails here, naming the installed version, rather than deep inside an export
(tests/unit/test_adapters.py runs it on a real model).
"""

from __future__ import annotations

from typing import Any

from handserve.adapters import moved

LIBRARY = "ai-edge-litert"


def operator_names(interpreter: Any) -> list[str]:
    """Sorted names of the operators an ``ai_edge_litert.interpreter.Interpreter`` runs.

    Raises:
        RuntimeError: the installed LiteRT no longer has ``Interpreter._get_ops_details`` as
            used here (the message names its version).
    """
    internal = "Interpreter._get_ops_details() -> [{'op_name': str, ...}]"
    try:
        details = interpreter._get_ops_details()
        return sorted({str(op["op_name"]) for op in details})
    except (AttributeError, KeyError, TypeError) as exc:
        raise moved(LIBRARY, "litert.py", internal, exc) from exc
