"""The Open Inference Protocol routes in-process: answers equal ``/predict``'s, every bad input
is a 4xx in the protocol's ``{"error": "..."}`` shape, and no request makes a 5xx (Hypothesis).

The protocol's own clients against a real server are in ``test_v2_clients.py``.
"""

from __future__ import annotations

import base64
import gzip
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handserve import artifacts
from handserve.images import decode_image
from service.config import ServiceConfig
from tests.service.helpers import copy_version, digit_png, inprocess_client

pytestmark = pytest.mark.slow

HEADER = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def setup(tiny_export: Path, tmp_path_factory: pytest.TempPathFactory):
    models = tmp_path_factory.mktemp("v2") / "models"
    copy_version(tiny_export, models, "tiny", 3)
    cfg = ServiceConfig(
        models_dir=str(models),
        runtime="litert",
        max_body_bytes=300_000,
        max_batch_images=4,
        warmup_batches=0,
    )
    manifest = artifacts.read_manifest(models / "tiny" / "3")
    with inprocess_client(cfg) as (client, _):
        yield client, manifest


@pytest.fixture(scope="module")
def client(setup):
    return setup[0]


@pytest.fixture(scope="module")
def contract(setup) -> artifacts.InputContract:
    return setup[1].input


def pixels(contract: artifacts.InputContract, seeds: list[int]) -> np.ndarray:
    """The images /predict would see, decoded from PNGs by the shared decoder."""
    return np.stack([decode_image(digit_png(s), contract.image_spec) for s in seeds])


def binary_request(inputs: list[tuple[dict[str, Any], bytes]], **extra: Any) -> dict[str, Any]:
    """Body and headers of a request with the binary tensor data extension."""
    head = {"inputs": [{**t, "parameters": {"binary_data_size": len(b)}} for t, b in inputs]}
    head.update(extra)
    header = json.dumps(head).encode()
    return {
        "content": header + b"".join(b for _, b in inputs),
        "headers": {HEADER: str(len(header)), "Content-Type": "application/octet-stream"},
    }


def serialize(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def predicted(client, seeds: list[int]) -> list[list[dict[str, Any]]]:
    files = [("files", (f"{s}.png", digit_png(s), "image/png")) for s in seeds]
    resp = client.post("/predict_batch", files=files, params={"top_k": 10})
    assert resp.status_code == 200, resp.text
    return [row["predictions"] for row in resp.json()["results"]]


def scores_of(rows: list[list[dict[str, Any]]]) -> np.ndarray:
    out = np.zeros((len(rows), len(rows[0])), np.float32)
    for i, row in enumerate(rows):
        for p in row:
            out[i, p["index"]] = p["score"]
    return out


def test_metadata_and_health(client, contract) -> None:
    server = client.get("/v2").json()
    assert server["name"] == "handserve"
    assert {"classification", "binary_tensor_data"} <= set(server["extensions"])
    assert client.get("/v2/health/live").json() == {"live": True}
    # /v2/health/ready waits for every worker process: checked against a real server
    meta = client.get("/v2/models/tiny").json()
    shape = [-1, contract.height, contract.width, contract.channels]
    assert meta["name"] == "tiny" and meta["versions"] == ["3"]
    assert {"name": "image", "datatype": "UINT8", "shape": shape} in meta["inputs"]
    assert {"name": "image_bytes", "datatype": "BYTES", "shape": [-1]} in meta["inputs"]
    assert meta["outputs"][0]["name"] == "probabilities"
    assert client.get("/v2/models/tiny/versions/3").json() == meta
    assert client.get("/v2/models/tiny/ready").status_code == 200
    assert client.get("/v2/models/tiny/versions/3/ready").status_code == 200
    for path in (
        "/v2/models/nope/ready",
        "/v2/models/tiny/versions/4",
        "/v2/models/tiny/versions/x",
    ):
        resp = client.get(path)
        assert resp.status_code == 404 and isinstance(resp.json()["error"], str), path


@pytest.mark.parametrize("datatype", ["UINT8", "FP32"])
def test_tensor_input_json_and_binary_equal_predict(client, contract, datatype) -> None:
    seeds = [1, 2, 3]
    x = pixels(contract, seeds)
    want = scores_of(predicted(client, seeds))
    tensor = {"name": "image", "shape": list(x.shape), "datatype": datatype}
    as_type = x.astype(np.uint8 if datatype == "UINT8" else "<f4")
    as_json = client.post(
        "/v2/models/tiny/infer",
        json={"id": "r-7", "inputs": [{**tensor, "data": as_type.tolist()}]},
    )
    assert as_json.status_code == 200, as_json.text
    body = as_json.json()
    assert body["id"] == "r-7" and body["model_name"] == "tiny" and body["model_version"] == "3"
    (out,) = body["outputs"]
    assert out["datatype"] == "FP32" and out["shape"] == [3, want.shape[1]]
    np.testing.assert_allclose(np.reshape(out["data"], out["shape"]), want, atol=1e-6)

    as_binary = client.post(
        "/v2/models/tiny/versions/3/infer",
        **binary_request([(tensor, as_type.tobytes())], parameters={"binary_data_output": True}),
    )
    assert as_binary.status_code == 200, as_binary.text
    size = int(as_binary.headers[HEADER])
    head = json.loads(as_binary.content[:size])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == want.size * 4
    got = np.frombuffer(as_binary.content[size:], "<f4").reshape(want.shape)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_encoded_images_and_classification_equal_predict(client) -> None:
    seeds = [4, 5]
    rows = predicted(client, seeds)
    files = [digit_png(s) for s in seeds]
    tensor = {"name": "image_bytes", "shape": [2], "datatype": "BYTES"}
    wanted = [{"name": "probabilities", "parameters": {"classification": 3}}]
    resp = client.post(
        "/v2/models/tiny/infer", **binary_request([(tensor, serialize(files))], outputs=wanted)
    )
    assert resp.status_code == 200, resp.text
    (out,) = resp.json()["outputs"]
    assert out["datatype"] == "BYTES" and out["shape"] == [2, 3]
    for i, row in enumerate(rows):
        for text, p in zip(out["data"][3 * i : 3 * i + 3], row[:3], strict=True):
            score, index, label = text.split(":", 2)
            assert (int(index), label) == (p["index"], p["label"])
            assert abs(float(score) - p["score"]) < 1e-6
    # The same images as base64 strings inside JSON.
    as_json = client.post(
        "/v2/models/tiny/infer",
        json={
            "inputs": [{**tensor, "data": [base64.b64encode(f).decode() for f in files]}],
            "outputs": [{"name": "probabilities", "parameters": {"classification": 3}}],
        },
    )
    assert as_json.json()["outputs"][0]["data"] == out["data"]


def test_compressed_body_is_accepted_and_a_bomb_refused(client, contract) -> None:
    x = pixels(contract, [6])
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": list(x.shape),
                    "datatype": "UINT8",
                    "data": x.ravel().tolist(),
                }
            ]
        }
    ).encode()
    plain = client.post("/v2/models/tiny/infer", content=body).json()
    for encoding, packed in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))):
        resp = client.post(
            "/v2/models/tiny/infer", content=packed, headers={"Content-Encoding": encoding}
        )
        assert resp.json() == plain, encoding
    bomb = gzip.compress(b" " * 5_000_000)  # 5 MB of spaces in about 5 kB
    resp = client.post("/v2/models/tiny/infer", content=bomb, headers={"Content-Encoding": "gzip"})
    assert resp.status_code == 413 and "decompressed" in resp.json()["error"]
    resp = client.post("/v2/models/tiny/infer", content=body, headers={"Content-Encoding": "br"})
    assert resp.status_code == 415


def _image_tensor(contract, n: int = 1, datatype: str = "UINT8", **kw: Any) -> dict[str, Any]:
    shape = [n, contract.height, contract.width, contract.channels]
    return {"name": "image", "shape": shape, "datatype": datatype, **kw}


BAD_JSON_CASES = [
    # (name, request JSON built from the contract, status, fragment of the error)
    ("no inputs", lambda c: {"inputs": []}, 400, "inputs"),
    (
        "two inputs",
        lambda c: {"inputs": [_image_tensor(c, data=[0]), _image_tensor(c, data=[0])]},
        400,
        "one input",
    ),
    (
        "unknown input",
        lambda c: {"inputs": [{**_image_tensor(c, data=[0]), "name": "x"}]},
        400,
        "unknown input 'x'",
    ),
    (
        "wrong shape",
        lambda c: {"inputs": [{**_image_tensor(c, data=[0]), "shape": [1, 5, 5, 1]}]},
        400,
        "has shape [1, 5, 5, 1]",
    ),
    (
        "wrong datatype",
        lambda c: {"inputs": [_image_tensor(c, datatype="INT64", data=[0])]},
        400,
        "UINT8 or FP32",
    ),
    (
        "too few values",
        lambda c: {"inputs": [_image_tensor(c, data=[1, 2, 3])]},
        400,
        "holds 3 values",
    ),
    (
        "uint8 over 255",
        lambda c: {"inputs": [_image_tensor(c, data=[300] * (c.height * c.width * c.channels))]},
        400,
        "0-255",
    ),
    (
        "strings as pixels",
        lambda c: {"inputs": [_image_tensor(c, data=["a"] * (c.height * c.width * c.channels))]},
        400,
        "whole numbers",
    ),
    (
        "fp32 over range",
        lambda c: {
            "inputs": [
                _image_tensor(c, datatype="FP32", data=[1e9] * (c.height * c.width * c.channels))
            ]
        },
        400,
        "within",
    ),
    (
        "ragged data",
        lambda c: {"inputs": [_image_tensor(c, data=[[1, 2], [3]])]},
        400,
        "not a regular array",
    ),
    ("no data", lambda c: {"inputs": [_image_tensor(c)]}, 400, "has no data"),
    ("zero images", lambda c: {"inputs": [_image_tensor(c, n=0, data=[])]}, 400, "no image"),
    (
        "too many images",
        lambda c: {"inputs": [_image_tensor(c, n=5, data=[0])]},
        413,
        "over the limit of 4",
    ),
    (
        "bytes with a tensor type",
        lambda c: {
            "inputs": [{"name": "image_bytes", "shape": [1], "datatype": "UINT8", "data": ["x"]}]
        },
        400,
        "use BYTES",
    ),
    (
        "bytes not base64",
        lambda c: {
            "inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": ["@@"]}]
        },
        400,
        "base64",
    ),
    (
        "bytes count differs",
        lambda c: {
            "inputs": [{"name": "image_bytes", "shape": [2], "datatype": "BYTES", "data": ["aGk="]}]
        },
        400,
        "its shape says 2",
    ),
    (
        "bytes not an image",
        lambda c: {
            "inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": ["aGk="]}]
        },
        400,
        "image",
    ),
    (
        "unknown output",
        lambda c: {"inputs": [_image_tensor(c, data=[0])], "outputs": [{"name": "logits"}]},
        400,
        "unknown output",
    ),
    (
        "bad classification",
        lambda c: {
            "inputs": [_image_tensor(c, data=[0] * (c.height * c.width * c.channels))],
            "outputs": [{"name": "probabilities", "parameters": {"classification": "two"}}],
        },
        400,
        "classification",
    ),
    (
        "unknown tensor key",
        lambda c: {"inputs": [{**_image_tensor(c, data=[0]), "dims": [1]}]},
        400,
        "dims",
    ),
]


@pytest.mark.parametrize(
    ("build", "status", "fragment"),
    [case[1:] for case in BAD_JSON_CASES],
    ids=[case[0] for case in BAD_JSON_CASES],
)
def test_bad_requests_get_a_clear_4xx(client, contract, build, status, fragment) -> None:
    resp = client.post("/v2/models/tiny/infer", json=build(contract))
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert isinstance(error, str) and fragment in error, error


def test_bad_binary_framing_is_refused(client, contract) -> None:
    x = pixels(contract, [1]).astype(np.uint8)
    tensor = _image_tensor(contract)
    good = binary_request([(tensor, x.tobytes())])
    cases = [
        ({**good["headers"], HEADER: "12x"}, good["content"], "not a number"),
        ({**good["headers"], HEADER: "999999"}, good["content"], "only"),
        (good["headers"], good["content"] + b"extra", "binary_data_size"),
        (good["headers"], good["content"][:-1], "binary_data_size"),
        ({**good["headers"], HEADER: "3"}, good["content"], "not valid JSON"),
    ]
    for headers, content, fragment in cases:
        resp = client.post("/v2/models/tiny/infer", content=content, headers=headers)
        assert resp.status_code == 400, resp.text
        assert fragment in resp.json()["error"], (fragment, resp.json())
    fp32 = binary_request([({**tensor, "datatype": "FP32"}, x.tobytes())])  # uint8 bytes as FP32
    resp = client.post("/v2/models/tiny/infer", **fp32)
    assert resp.status_code == 400 and "needs" in resp.json()["error"]
    truncated = binary_request(
        [({"name": "image_bytes", "shape": [1], "datatype": "BYTES"}, struct.pack("<I", 99) + b"x")]
    )
    resp = client.post("/v2/models/tiny/infer", **truncated)
    assert resp.status_code == 400 and "declares 99 bytes" in resp.json()["error"]


def test_unknown_model_and_version_are_404(client, contract) -> None:
    body = {"inputs": [_image_tensor(contract, data=[0])]}
    for path in ("/v2/models/nope/infer", "/v2/models/tiny/versions/9/infer"):
        resp = client.post(path, json=body)
        assert resp.status_code == 404 and "not served" in resp.json()["error"], path
    resp = client.get("/v2/models/tiny/unknown")
    assert resp.status_code == 404 and isinstance(resp.json()["error"], str)


@st.composite
def v2_requests(draw: Any) -> dict[str, Any]:
    """Infer requests with random structure, types, shapes and framing; often malformed."""
    name = draw(st.sampled_from(["image", "image_bytes", "x"]))
    datatype = draw(st.sampled_from(["UINT8", "FP32", "BYTES", "INT8", ""]))
    shape = draw(st.lists(st.integers(-2, 30), max_size=5))
    tensor: dict[str, Any] = {"name": name, "shape": shape, "datatype": datatype}
    binary = draw(st.booleans())
    payload = draw(st.binary(max_size=3000))
    if not binary:
        tensor["data"] = draw(
            st.one_of(
                st.lists(st.integers(-5, 300), max_size=800),
                st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=50),
                st.lists(st.text(max_size=8), max_size=4),
                st.just([[1, 2], [3]]),
                st.none(),
            )
        )
    head: dict[str, Any] = {"inputs": [tensor]}
    if draw(st.booleans()):
        head["outputs"] = [
            {
                "name": draw(st.sampled_from(["probabilities", "p"])),
                "parameters": {
                    "classification": draw(st.sampled_from([1, 3, 0, -1, "2", True, 99])),
                    "binary_data": draw(st.sampled_from([True, False, "yes"])),
                },
            }
        ]
    if binary:
        tensor["parameters"] = {"binary_data_size": draw(st.sampled_from([len(payload), 0, -1]))}
        header = json.dumps(head).encode()
        cut = draw(st.sampled_from([len(header), len(header) - 1, 0]))
        return {"content": header + payload, "headers": {HEADER: str(cut)}}
    return {"content": json.dumps(head).encode(), "headers": {"Content-Type": "application/json"}}


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=v2_requests())
def test_any_infer_request_gets_a_200_or_a_protocol_error(client, request) -> None:
    resp = client.post("/v2/models/tiny/infer", **request)
    assert resp.status_code in (200, 400, 404, 413, 415), resp.text[:300]
    if resp.status_code != 200:
        error = resp.json()["error"]
        assert isinstance(error, str) and 0 < len(error) < 600


def test_infer_shares_admission_metrics_and_readiness(tiny_export: Path, tmp_path: Path) -> None:
    """The v2 route takes /predict's path: the same admission cap, the same metrics."""
    copy_version(tiny_export, tmp_path / "models", "tiny", 1)
    cfg = ServiceConfig(
        models_dir=str(tmp_path / "models"),
        runtime="litert",
        max_inflight_images=4,
        max_batch_images=4,
        retry_after_s=3,
        warmup_batches=0,
    )
    files = [digit_png(s) for s in range(3)]
    request = binary_request(
        [({"name": "image_bytes", "shape": [3], "datatype": "BYTES"}, serialize(files))]
    )
    with inprocess_client(cfg, load=False) as (c, _):
        resp = c.post("/v2/models/tiny/infer", **request)
        assert resp.status_code == 503 and "loading" in resp.json()["error"]
        assert c.get("/v2/health/ready").json() == {"ready": False}
    with inprocess_client(cfg) as (c, svc):
        svc.plane.admission.acquire(2)  # two images of another request still in flight
        resp = c.post("/v2/models/tiny/infer", **request)
        assert resp.status_code == 503 and resp.headers["Retry-After"] == "3"
        assert "capacity" in resp.json()["error"]
        svc.plane.admission.release(2)

        def predicted_total() -> float:
            return sum(
                s.value
                for m in svc.metrics.predictions.collect()
                for s in m.samples
                if s.name.endswith("_total") and s.labels["model"] == "tiny"
            )

        before = predicted_total()
        assert c.post("/v2/models/tiny/infer", **request).status_code == 200
        assert predicted_total() == before + 3
        assert svc.plane.admission.inflight == 0
        rejected = svc.metrics.rejected_inputs.labels(reason="bad_request")
        count = rejected._value.get()
        c.post("/v2/models/tiny/infer", json={"inputs": []})
        assert rejected._value.get() == count + 1


def test_huge_integers_are_refused_not_a_500(client) -> None:
    """Python refuses to parse integers of over 4,300 digits with a ValueError that is not a
    JSONDecodeError: both APIs must answer 400, and never echo the number back whole."""
    huge = b"9" * 5000
    v2_body = b'{"inputs":[{"name":"image","shape":[1,' + huge + b',2,1],"datatype":"UINT8"}]}'
    resp = client.post("/v2/models/tiny/infer", content=v2_body)
    assert resp.status_code == 400 and len(resp.json()["error"]) < 300
    big = b"9" * 4000  # parses, but is no dimension
    v2_body = b'{"inputs":[{"name":"image","shape":[1,' + big + b',2,1],"datatype":"UINT8"}]}'
    resp = client.post("/v2/models/tiny/infer", content=v2_body)
    assert resp.status_code == 400 and len(resp.json()["error"]) < 300
    image = base64.b64encode(digit_png(1))
    predict_body = b'{"image":"' + image + b'","top_k":' + huge + b"}"
    resp = client.post(
        "/predict", content=predict_body, headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "bad_json"
