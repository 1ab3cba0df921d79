"""Keras' private layer API, used here and nowhere else.

Keras 3 lists a model's direct layers publicly (``model.layers``) but every layer at every
depth (a backbone nested in the model, blocks nested in it) only through
``Layer._flatten_layers``; the from-scratch baselines set the momentum of each BatchNorm layer
through it (:mod:`training.model`). A Keras upgrade that moves it fails here, naming the
installed version, rather than inside a training run (tests/unit/test_adapters.py runs it on
a nested model). Keras is imported by the caller: this module imports nothing of it.
"""

from __future__ import annotations

from typing import Any

from handserve.adapters import moved

LIBRARY = "keras"


def nested_layers(model: Any) -> list[Any]:
    """Every layer inside ``model`` at any depth (not ``model`` itself), each once.

    Raises:
        RuntimeError: the installed Keras no longer has ``Layer._flatten_layers`` as used here
            (the message names its version).
    """
    internal = "Layer._flatten_layers(include_self=False, recursive=True)"
    try:
        return list(model._flatten_layers(include_self=False, recursive=True))
    except (AttributeError, TypeError) as exc:
        raise moved(LIBRARY, "keras.py", internal, exc) from exc
