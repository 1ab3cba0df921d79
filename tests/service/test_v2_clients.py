"""The Open Inference Protocol's own clients against a real ``bentoml serve``.

``tritonclient[http]`` and the ``kserve`` SDK's REST client, from the package index, used as a
KServe or Triton user would: list, check and query the served models without knowing
handserve, and get the predictions ``/predict`` gives for the same image.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from handserve import artifacts
from handserve.images import decode_image
from handserve.ranking import top_k
from tests.service.helpers import digit_png, predict_batch_scores

pytestmark = [pytest.mark.server, pytest.mark.slow]

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
utils = pytest.importorskip("tritonclient.utils")
kserve = pytest.importorskip("kserve", reason="the kserve SDK is not installed")

SEEDS = [11, 12, 13]


@pytest.fixture(scope="module")
def triton(server) -> Any:
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def expected(server) -> dict[str, Any]:
    """What ``/predict_batch`` answers for the test images: full scores and the top 3."""
    scores = predict_batch_scores(server.url, "digits", [digit_png(s) for s in SEEDS])
    manifest = artifacts.read_manifest(server.models_dir / "digits" / "2")
    pixels = np.stack([decode_image(digit_png(s), manifest.input.image_spec) for s in SEEDS])
    top3 = [top_k(row, manifest.labels, 3) for row in scores]
    return {"scores": scores, "top3": top3, "pixels": pixels}


def test_triton_client_lists_and_checks_models(triton, server) -> None:
    assert triton.is_server_live() and triton.is_server_ready()
    meta = triton.get_server_metadata()
    assert "binary_tensor_data" in meta["extensions"]
    model = triton.get_model_metadata("digits")
    assert model["versions"] == ["2"]
    assert {i["name"] for i in model["inputs"]} == {"image", "image_bytes"}
    assert model["outputs"][0]["shape"] == [-1, 10]
    assert triton.get_model_metadata("digits", model_version="2") == model
    assert triton.is_model_ready("digits") and triton.is_model_ready("tiny")
    assert triton.is_model_ready("digits", model_version="2")
    assert not triton.is_model_ready("broken")  # refused at start: corrupt checksum
    assert not triton.is_model_ready("digits", model_version="1")
    with pytest.raises(utils.InferenceServerException, match="not served"):
        triton.get_model_metadata("nope")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", ["UINT8", "FP32"])
def test_triton_tensor_infer_equals_predict(triton, expected, binary, datatype) -> None:
    x = expected["pixels"].astype(np.uint8 if datatype == "UINT8" else np.float32)
    tensor = httpclient.InferInput("image", list(x.shape), datatype)
    tensor.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("probabilities", binary_data=binary)
    result = triton.infer("digits", [tensor], outputs=[out], request_id="abc-1")
    assert result.get_response()["id"] == "abc-1"
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected["scores"], atol=1e-6)


def test_triton_encoded_images_with_classification(triton, expected) -> None:
    files = np.array([digit_png(s) for s in SEEDS], dtype=np.object_)
    tensor = httpclient.InferInput("image_bytes", [len(SEEDS)], "BYTES")
    tensor.set_data_from_numpy(files)  # binary by default: length-prefixed elements
    out = httpclient.InferRequestedOutput("probabilities", class_count=3)
    result = triton.infer("digits", [tensor], outputs=[out], model_version="2")
    got = result.as_numpy("probabilities")
    assert got.shape == (len(SEEDS), 3)
    for row, want in zip(got, expected["top3"], strict=True):
        parsed = [item.decode().split(":", 2) for item in row]
        assert [(int(i), label) for _, i, label in parsed] == [
            (p["index"], p["label"]) for p in want
        ]
        assert np.allclose([float(s) for s, _, _ in parsed], [p["score"] for p in want], atol=1e-6)
    # No outputs named: the client asks for every output in binary.
    plain = triton.infer("digits", [tensor])
    np.testing.assert_allclose(plain.as_numpy("probabilities"), expected["scores"], atol=1e-6)


def test_triton_errors_are_client_errors(triton, expected) -> None:
    x = expected["pixels"][:, :10]  # not the model's size
    tensor = httpclient.InferInput("image", list(x.shape), "UINT8")
    tensor.set_data_from_numpy(x)
    with pytest.raises(utils.InferenceServerException) as info:
        triton.infer("digits", [tensor])
    assert info.value.status() == "400" and "this model takes [N, 28, 28, 1]" in str(info.value)
    with pytest.raises(utils.InferenceServerException, match="not served") as info:
        triton.infer("digits", [tensor], model_version="7")
    assert info.value.status() == "404"


def test_kserve_rest_client_equals_predict(server, expected) -> None:
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    async def run() -> tuple[Any, ...]:
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
        try:
            live = await client.is_server_live(server.url)
            ready = await client.is_server_ready(server.url)
            model_ready = await client.is_model_ready(server.url, "digits")
            missing_ready = await client.is_model_ready(server.url, "nope")
            x = expected["pixels"].astype(np.uint8)
            tensor = InferInput("image", list(x.shape), "UINT8")
            tensor.set_data_from_numpy(x, binary_data=True)
            as_tensor = await client.infer(
                server.url, InferRequest("digits", [tensor], request_id="k-1"), "digits"
            )
            files = np.array([digit_png(s) for s in SEEDS], dtype=np.object_)
            blobs = InferInput("image_bytes", [len(SEEDS)], "BYTES")
            blobs.set_data_from_numpy(files, binary_data=True)
            as_files = await client.infer(server.url, InferRequest("digits", [blobs]), "digits")
            return live, ready, model_ready, missing_ready, as_tensor, as_files
        finally:
            await client.close()

    live, ready, model_ready, missing_ready, as_tensor, as_files = asyncio.run(run())
    assert live and ready and model_ready and not missing_ready
    assert as_tensor.id == "k-1"
    for response in (as_tensor, as_files):
        (out,) = response.outputs
        assert out.name == "probabilities" and out.datatype == "FP32"
        got = np.asarray(out.data, np.float32).reshape(out.shape)
        np.testing.assert_allclose(got, expected["scores"], atol=1e-6)
