"""A hand-feature head served by the real ``bentoml serve``: a photo or a hand as landmark
tensors in, a letter out, through every protocol, with the answers of the exported file.

The head is trained in seconds on synthetic hands (as tests/export/test_hand_export.py does);
what is checked is the serving path: the version is loaded and not refused, the landmark tensors
(v2 REST as JSON and as binary data, the typed endpoint) give the exported ``.tflite``'s scores
for the features the server's own code makes from that hand, and a photo without a hand is the
422 ``no_hand`` of today.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import requests

from handserve import hand_features
from handserve.hand_pipeline import LANDMARK_TENSORS, record_tensors
from handserve.runtimes import open_runtime
from service.local_server import wait_ready
from tests.service.helpers import digit_png, needs_hand_models, running_server

from ..export.test_hand_export import _train_and_export
from ..model.test_hand_head import fake_record, sign_folders  # noqa: F401 - the fixture

pytestmark = [
    pytest.mark.slow,
    pytest.mark.server,
    needs_hand_models,
]


def test_a_hand_feature_head_is_served_from_photos_and_landmarks(
    sign_folders: tuple[Path, Path],  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    code, _, version = _train_and_export(sign_folders, tmp_path)
    assert code == 0
    record = fake_record(sign_folders[1] / "B" / "three_3.jpg")
    assert record is not None
    tensors = record_tensors(record)  # as a phone's HandLandmarker reports this hand
    image, world, handedness, size = (tensors[name] for name in LANDMARK_TENSORS)
    from handserve import artifacts

    manifest = artifacts.load_verified(version)
    runtime = open_runtime(version, manifest, runtime="litert")
    want = runtime.predict(hand_features.landmark_features(record[None]))[0]

    env = {"HANDSERVE_WORKERS": "1"}
    with running_server(tmp_path / "models", tmp_path, env) as (url, proc, _):
        wait_ready(url, proc, timeout=180)
        described = requests.get(url + "/models", timeout=10).json()
        assert described["refused"] == []
        (served,) = described["models"]
        assert served["input"]["type"] == "hand_features"
        assert served["input"]["landmark_tensors"]["image_landmarks"] == [1, 21, 3]
        meta = requests.get(url + "/v2/models/signs", timeout=10).json()
        assert {"name": "handedness", "datatype": "FP32", "shape": [1, 1]} in meta["inputs"]

        # v2 REST, JSON data
        body = {
            "inputs": [
                {"name": k, "datatype": "FP32", "shape": list(v.shape), "data": v.ravel().tolist()}
                for k, v in tensors.items()
            ]
        }
        resp = requests.post(url + "/v2/models/signs/infer", json=body, timeout=30)
        assert resp.status_code == 200, resp.text
        got = np.asarray(resp.json()["outputs"][0]["data"], np.float32)
        np.testing.assert_allclose(got, want, atol=1e-5)

        # v2 REST, the binary tensor data extension: four inputs' bytes one after another
        parts = [np.ascontiguousarray(v, "<f4").tobytes() for v in tensors.values()]
        header = {
            "inputs": [
                {
                    "name": k,
                    "datatype": "FP32",
                    "shape": list(v.shape),
                    "parameters": {"binary_data_size": len(p)},
                }
                for (k, v), p in zip(tensors.items(), parts, strict=True)
            ],
            "outputs": [{"name": "probabilities", "parameters": {"classification": 1}}],
        }
        head = json.dumps(header).encode()
        resp = requests.post(
            url + "/v2/models/signs/infer",
            data=head + b"".join(parts),
            headers={"Inference-Header-Content-Length": str(len(head))},
            timeout=30,
        )
        assert resp.status_code == 200, resp.text
        best = resp.json()["outputs"][0]["data"][0]
        assert best.endswith(":" + manifest.labels[int(np.argmax(want))])

        # the typed endpoint, as a phone app's JSON
        resp = requests.post(
            url + "/classify_landmarks",
            json={
                "image_landmarks": image.reshape(21, 3).tolist(),
                "world_landmarks": world.reshape(21, 3).tolist(),
                "handedness": float(handedness.ravel()[0]),
                "image_size": size.ravel().tolist(),
                "top_k": 3,
            },
            timeout=30,
        )
        assert resp.status_code == 200, resp.text
        top = resp.json()["predictions"][0]
        assert top["label"] == manifest.labels[int(np.argmax(want))]
        assert top["score"] == pytest.approx(float(want.max()), abs=1e-5)

        # a hand that is not one: a clear 400 naming the tensor
        bad = dict(body)
        bad["inputs"] = body["inputs"][:3]
        resp = requests.post(url + "/v2/models/signs/infer", json=bad, timeout=30)
        assert resp.status_code == 400 and "image_size" in resp.json()["error"]

        # a photo: the server finds the hand itself; this one has none
        resp = requests.post(
            url + "/predict", data=digit_png(1), headers={"Content-Type": "image/png"}, timeout=60
        )
        assert resp.status_code == 422, resp.text
        assert resp.json()["error"]["code"] == "no_hand"


def test_binary_parts_are_handed_to_the_inputs_in_order() -> None:
    """The four landmark tensors' bytes follow the header one after another (unit level)."""
    from service import v2

    parts = v2._BinaryParts(struct.pack("<3f", 1, 2, 3))
    first = v2.InferInputTensor(
        name="a", shape=[1], datatype="FP32", parameters={"binary_data_size": 4}
    )
    second = v2.InferInputTensor(
        name="b", shape=[2], datatype="FP32", parameters={"binary_data_size": 8}
    )
    assert parts.take(0, first, 2) == struct.pack("<f", 1)
    assert parts.take(1, second, 2) == struct.pack("<2f", 2, 3)
    parts.check_consumed()
    short = v2._BinaryParts(struct.pack("<2f", 1, 2))
    short.take(0, first, 2)
    with pytest.raises(v2.ApiError, match="declares binary_data_size 8 but 4 bytes follow"):
        short.take(1, second, 2)
