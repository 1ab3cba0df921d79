"""``devices``: data-parallel training with MirroredStrategy, here over two logical CPU devices
(the CPU split in a fresh process: tests/model/devices_driver.py), trains, learns, exports a
version that verifies, and that version predicts in a single-device process what the model
predicted across both replicas.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import handserve_cli as cli
from handserve import artifacts
from handserve.configs import ConfigError
from handserve.images import decode_image
from service.config import ServiceConfig
from tests.conftest import REPO
from tests.service.helpers import digit_png, inprocess_client
from training.config import TrainConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_devices(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("devices")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "tests.model.devices_driver", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "MirroredStrategy over /cpu:0, /cpu:1" in done.stderr
    return json.loads((out / "result.json").read_text())


def test_the_tiny_model_learns_on_two_devices(two_devices: dict) -> None:
    metrics = two_devices["metrics"]
    assert metrics["replicas"] == 2  # recorded in the run folder's metrics.json
    losses = [epoch["loss"] for epoch in two_devices["history"]]
    assert len(losses) == 6 and losses[-1] < 0.5 * losses[0]
    assert metrics["val"]["accuracy"] > 0.5 and metrics["test"]["accuracy"] > 0.5  # chance 0.1


def test_its_export_verifies_and_predicts_as_the_replicas_did(two_devices: dict, capsys) -> None:
    version = Path(two_devices["version"])
    assert cli.main(["verify", str(version), "--speed-seconds", "0"]) == 0
    assert "parity ok" in capsys.readouterr().out
    samples = np.load(version / artifacts.SAMPLES)
    single = keras.models.load_model(version / artifacts.KERAS_MODEL, compile=False)
    here = single.predict(samples["x"].astype("float32"), batch_size=32, verbose=0)
    np.testing.assert_allclose(here, np.array(two_devices["distributed"]), atol=1e-6)


def test_phase_two_with_ema_and_a_checkpoint_runs_under_the_strategy(two_devices: dict) -> None:
    assert two_devices["phase2"]["epochs"] == 2
    assert two_devices["phase2"]["best_val_loss"] is not None
    assert two_devices["checkpoint"]


def test_devices_is_a_count_or_all() -> None:
    assert TrainConfig(devices=2).devices == "2"  # a config file's number
    assert TrainConfig(devices="all").devices == "all"
    for bad in ("0", "-1", "two", "²", True):
        with pytest.raises(ConfigError, match=r"^--devices: devices must be a positive count or"):
            TrainConfig.load(flags={"devices": bad})


def test_its_export_serves(two_devices: dict) -> None:
    """The service (in-process, the request path of ``bentoml serve``) serves the version the
    two-device run exported, with the answers of the model itself."""
    version = Path(two_devices["version"])
    cfg = ServiceConfig(models_dir=str(version.parent.parent), runtime="litert")
    manifest = artifacts.read_manifest(version)
    single = keras.models.load_model(version / artifacts.KERAS_MODEL, compile=False)
    with inprocess_client(cfg) as (client, _):
        for seed in range(4):
            data = digit_png(seed)
            r = client.post("/predict?model=two", files={"image": ("d.png", data, "image/png")})
            assert r.status_code == 200, r.text
            pixels = decode_image(data, manifest.input.image_spec)[None].astype("float32")
            best = int(single.predict(pixels, verbose=0)[0].argmax())
            assert r.json()["predictions"][0]["index"] == best
