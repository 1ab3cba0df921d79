"""Suite-wide fixtures: paths, the optional ../shared folder, and quiet, offline TensorFlow.

Fixtures that build a tiny trained run and a tiny export live in ``tests/fixtures_run.py`` and
``tests/fixtures_export.py`` (session-scoped, so the suite trains and exports once).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Set before anything imports TensorFlow: quiet logs, deterministic ops, no GPU surprises.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# Keras reads KERAS_HOME once, at import: point it at an empty folder now, so no test depends on
# (or writes to) the user's ~/.keras cache, and "imagenet" weights fail as they do offline.
os.environ["KERAS_HOME"] = tempfile.mkdtemp(prefix="handserve-tests-keras-")

REPO = Path(__file__).resolve().parents[1]

pytest_plugins = ["tests.fixtures_run", "tests.fixtures_export"]

#: Fixtures that say what a test needs, and the marker each gives every test that requests it
#: (at any depth: ``server`` needs ``tiny_export``, which needs ``tiny_run``), so that
#: ``make test-fast`` (``-m "not slow and not server ..."``) cannot run one by mistake.
FIXTURE_MARKERS = {
    "tiny_run": "slow",  # trains a model
    "tiny_export": "slow",  # exports one
    "server": "server",  # starts `bentoml serve`
    "shared_data": "shared_data",
    "mobilenet_v2_weights": "shared_data",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by the fixtures it requests (:data:`FIXTURE_MARKERS`)."""
    for item in items:
        requested = set(getattr(item, "fixturenames", ()))
        for fixture, marker in FIXTURE_MARKERS.items():
            if fixture in requested:
                item.add_marker(marker)


def shared_dir() -> Path:
    """``../shared`` beside the checkout (or $HANDSERVE_SHARED): real data for optional tests."""
    return Path(os.environ.get("HANDSERVE_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_dir() / "data"
    if not path.is_dir():
        pytest.skip(f"real datasets not found at {path} (../shared is absent)")
    return path


@pytest.fixture(scope="session")
def mobilenet_v2_weights() -> Path:
    path = (
        shared_dir()
        / "weights"
        / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    )
    if not path.is_file():
        pytest.skip(f"MobileNetV2 weights not found at {path} (../shared is absent)")
    return path
