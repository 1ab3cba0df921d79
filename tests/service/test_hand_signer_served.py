"""A stranger's hand through the real server: a landmark model trained on signers of the shared
photos, served by ``bentoml serve``, reads the photos of a signer it never saw.

The issue's test of the whole chain on real data (issue 32): ``handserve train`` with
``configs/asl_photos.yaml`` on three sources of ``../shared/data/asl_signers`` (massey's five
signers, mariia00, roboflow; a subset of each letter, to keep the suite quick), ``--export``,
then the held-out webcam signer ``lifunn``'s photos POSTed to ``/predict`` and their hands sent
as landmark tensors to the Open Inference Protocol. The leave-one-group-out benchmark
(docs/training.md, "Hand features") measured 84-92% on this signer with every photo; here the
floor is the issue's 75% per unit, on photos where a hand is found.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import requests

from handserve_cli import main
from service.local_server import wait_ready
from tests.service.helpers import needs_hand_models, running_server

pytestmark = [pytest.mark.slow, pytest.mark.server, pytest.mark.shared_data, needs_hand_models]

REPO = Path(__file__).resolve().parents[2]
TRAIN_SOURCES = ("massey", "mariia00", "roboflow")
PER_LETTER = 16  # photos per letter and source taken for training
HELD_OUT = "lifunn"
PER_LETTER_HELD_OUT = 3


def sample(folder: Path, n: int, seed: int) -> list[Path]:
    photos = sorted(folder.glob("*.jpg"))
    return random.Random(seed).sample(photos, min(n, len(photos)))


def test_a_served_landmark_model_reads_a_signer_it_never_saw(
    shared_data: Path, tmp_path: Path
) -> None:
    signers = shared_data / "asl_signers"
    train_root = tmp_path / "signers"
    for source in TRAIN_SOURCES:
        for letter_dir in sorted((signers / source).iterdir()):
            for photo in sample(letter_dir, PER_LETTER, seed=len(letter_dir.name)):
                link = train_root / source / letter_dir.name / photo.name
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(photo)
    code = main(
        [
            "train",
            "--config",
            str(REPO / "configs" / "asl_photos.yaml"),
            "--data-dir",
            str(train_root),
            "--runs-dir",
            str(tmp_path / "runs"),
            "--models-dir",
            str(tmp_path / "models"),
            "--export",
        ]
    )
    assert code == 0
    (version,) = (tmp_path / "models").glob("asl-letters/*")

    held_out = [
        (letter_dir.name, photo)
        for letter_dir in sorted((signers / HELD_OUT).iterdir())
        for photo in sample(letter_dir, PER_LETTER_HELD_OUT, seed=7)
    ]
    from handserve import hands
    from handserve.hand_pipeline import landmark_tensors
    from handserve.images import open_image

    detector = hands.HandDetector(hands.models_source())
    with running_server(tmp_path / "models", tmp_path, {"HANDSERVE_WORKERS": "1"}) as (
        url,
        proc,
        _,
    ):
        wait_ready(url, proc, timeout=180)
        right = found = 0
        for letter, photo in held_out:
            resp = requests.post(
                url + "/predict",
                data=photo.read_bytes(),
                headers={"Content-Type": "image/jpeg"},
                timeout=60,
            )
            if resp.status_code == 422:
                assert resp.json()["error"]["code"] == "no_hand"
                continue
            assert resp.status_code == 200, resp.text
            found += 1
            answer = resp.json()["predictions"][0]["label"]
            right += answer == letter
            # the same hand as a phone would send it: the same letter
            hand = hands.find_hand(open_image(photo.read_bytes(), size=hands.DETECT_SIZE), detector)
            tensors = landmark_tensors(hand)
            body = {
                "inputs": [
                    {
                        "name": k,
                        "datatype": "FP32",
                        "shape": list(v.shape),
                        "data": np.asarray(v).ravel().tolist(),
                    }
                    for k, v in tensors.items()
                ],
                "outputs": [{"name": "probabilities", "parameters": {"classification": 1}}],
            }
            v2 = requests.post(url + "/v2/models/asl-letters/infer", json=body, timeout=60)
            assert v2.status_code == 200, v2.text
            assert v2.json()["outputs"][0]["data"][0].endswith(":" + answer)
    assert found >= len(held_out) * 3 // 4, f"a hand found in {found} of {len(held_out)}"
    accuracy = right / found
    print(f"held-out signer {HELD_OUT}: {right}/{found} = {accuracy:.1%} ({version.name})")
    assert accuracy >= 0.75
