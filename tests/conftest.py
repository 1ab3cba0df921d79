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


#: Tests that took over 10 s on their own (the ``call``, not a shared fixture), marked ``long``:
#: measured 2026-12-07 on the 2-core machine shared with other work (load 5-10), with
#: ``pytest --durations=0 --durations-min=8`` over everything but the server, browser,
#: Prometheus and podman tests (those are all slow and seconds to minutes each).
LONG_TESTS = {
    "tests/export/test_benchmark_scripts.py::test_export_parity_trains_exports_and_verifies_every_format",
    "tests/export/test_benchmark_scripts.py::test_phone_photos_compares_the_decoders_on_blown_up_photos",
    "tests/export/test_benchmark_scripts.py::test_train_bench_trains_and_records_its_row",
    "tests/export/test_export.py::test_a_format_that_fails_parity_is_left_out_and_the_rest_published",
    "tests/export/test_export.py::test_export_cli_exit_codes",
    "tests/export/test_export.py::test_exports_of_one_name_started_together_all_publish",
    "tests/export/test_export.py::test_failed_parity_of_the_served_format_publishes_nothing",
    "tests/export/test_export.py::test_rgb_run_exports_with_an_rgb_contract",
    "tests/export/test_export.py::test_train_with_export_publishes_a_version",
    "tests/model/test_model.py::test_random_backbone_trains_from_scratch",
    "tests/model/test_small_data.py::test_cli_prints_one_line_per_epoch_and_no_tensorflow_banner",
    "tests/model/test_small_data.py::test_verbose_cli_shows_tensorflow_logging",
    "tests/model/test_train.py::test_bfloat16_run_saves_and_exports_a_float32_model",
    "tests/model/test_train.py::test_cli_run_is_reproducible_with_a_seed",
    "tests/model/test_train.py::test_default_config_learns_the_embedded_digits",
    "tests/model/test_train.py::test_two_phase_run_fine_tunes_at_lower_rate",
    "tests/unit/test_requirements_install.py::test_pip_installs_the_file",
    # measured while the session's other work shared the machine (each well over 10 s)
    "tests/service/test_deadline_server.py::test_a_request_past_the_timeout_gets_504_in_its_shape_and_stops",
    "tests/service/test_worker_restart.py::test_a_killed_worker_comes_back_without_503",
    "tests/service/test_hand_serving.py::test_a_hand_feature_head_is_served_from_photos_and_landmarks",
    "tests/service/test_hand_signer_served.py::test_a_served_landmark_model_reads_a_signer_it_never_saw",
    "tests/service/test_graceful_stop.py::test_sigterm_under_load_answers_everything_in_flight",
    "tests/export/test_hand_export.py::test_a_hand_run_exports_every_format_with_a_hand_feature_contract",
    # 38-45 s (four modes in one page) and 29-31 s, 2026-12-07, the machine shared (load 2-3)
    "tests/service/test_demo_camera.py::test_a_landmark_model_spells_a_word_in_every_mode",
    "tests/service/test_demo_camera.py::test_the_browser_finds_the_hands_the_server_finds",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by the fixtures it requests (:data:`FIXTURE_MARKERS`), and the tests of
    :data:`LONG_TESTS` ``long`` (every parameter of one)."""
    for item in items:
        requested = set(getattr(item, "fixturenames", ()))
        for fixture, marker in FIXTURE_MARKERS.items():
            if fixture in requested:
                item.add_marker(marker)
        if item.nodeid.split("[")[0] in LONG_TESTS:
            item.add_marker("long")


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
