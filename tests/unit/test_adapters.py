"""Private library internals live in ``handserve/adapters/``, one module per library, and each
adapter still works on the installed version: an upgrade that moves one fails here with the
library's name and version, not deep inside a training run or an export."""

from __future__ import annotations

import ast
import importlib.metadata
import re

import pytest

from handserve.adapters import keras as keras_internals
from handserve.adapters import litert as litert_internals
from tests.conftest import REPO
from tests.unit.test_layout import python_files

#: Where a private name of another library may be used.
ADAPTERS = REPO / "handserve" / "adapters"
#: Packages checked (BentoML's and uvicorn's internals are in handserve/adapters too).
SCANNED = (
    "handserve",
    "handserve_cli",
    "training",
    "service",
    "benchmarks",
    "examples",
    "load_tests",
)


@pytest.fixture(scope="module")
def add_mul_tflite() -> bytes:
    """A two-operator LiteRT model (``x * 2 + 1``), converted by TensorFlow in a second."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
    def affine(x: tf.Tensor) -> tf.Tensor:
        return x * tf.constant([2.0, 3.0, 4.0, 5.0]) + tf.constant([1.0, 1.0, 2.0, 2.0])

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [affine.get_concrete_function()], affine
    )
    return converter.convert()


def test_litert_operator_names(add_mul_tflite: bytes) -> None:
    from ai_edge_litert.interpreter import Interpreter

    names = litert_internals.operator_names(Interpreter(model_content=add_mul_tflite))
    assert names == ["ADD", "MUL"]


def test_keras_nested_layers_reach_every_depth() -> None:
    import keras

    inner = keras.Sequential([keras.layers.Dense(3), keras.layers.BatchNormalization()])
    model = keras.Sequential([keras.Input((4,)), inner, keras.layers.Dense(2)])
    layers = keras_internals.nested_layers(model)
    norm = inner.layers[1]
    assert norm not in model.layers  # the public list stops at the first level
    assert model not in layers and {id(x) for x in (inner, norm, *inner.layers)} <= {
        id(x) for x in layers
    }


def test_a_moved_litert_internal_names_the_library_and_version(
    add_mul_tflite: bytes, monkeypatch
) -> None:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=add_mul_tflite)
    monkeypatch.delattr(Interpreter, "_get_ops_details")
    installed = importlib.metadata.version("ai-edge-litert")
    with pytest.raises(RuntimeError, match=rf"ai-edge-litert {re.escape(installed)}: .*_get_ops"):
        litert_internals.operator_names(interpreter)


def test_a_moved_keras_internal_names_the_library_and_version(monkeypatch) -> None:
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    monkeypatch.delattr(keras.layers.Layer, "_flatten_layers")
    installed = importlib.metadata.version("keras")
    with pytest.raises(RuntimeError, match=rf"keras {re.escape(installed)}: .*_flatten_layers"):
        keras_internals.nested_layers(model)


def private_uses(source: str) -> list[tuple[int, str]]:
    """``(line, code)`` of each private name of another object or module: ``obj._name`` (not
    ``self``/``cls``) and imports from ``pkg._module``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and re.match(r"_[^_]", node.attr):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.ImportFrom | ast.Import):
            modules = [node.module] if isinstance(node, ast.ImportFrom) else []
            modules += [] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            for module in filter(None, modules):
                if any(re.match(r"_[^_]", part) for part in module.split(".")):
                    found.append((node.lineno, f"import {module}"))
    return found


def test_the_scan_finds_private_names() -> None:
    source = (
        "import bentoml._internal.x\n"
        "from keras.src import _private\n"
        "def f(interp, self):\n"
        "    self._own()\n"
        "    interp._get_ops_details()\n"
        "    return interp.__class__\n"
    )
    assert private_uses(source) == [
        (1, "import bentoml._internal.x"),
        (5, "interp._get_ops_details"),
    ]


def test_private_internals_are_used_only_in_the_adapters() -> None:
    files = [
        p
        for p in python_files()
        if p.relative_to(REPO).parts[0] in SCANNED
        and ADAPTERS not in p.parents
        and "third_party" not in p.parts
    ]
    assert REPO / "training" / "litert.py" in files
    found = [
        f"{path.relative_to(REPO)}:{line}: {code}"
        for path in files
        for line, code in private_uses(path.read_text())
    ]
    assert not found, "move these into handserve/adapters/<library>.py:\n" + "\n".join(found)
