"""The Open Inference Protocol over gRPC against the session's real ``bentoml serve``.

``tritonclient.grpc`` and the kserve SDK's ``InferenceGRPCClient`` run as their users run them,
from a program of their own (tests/service/v2_grpc_driver.py: their generated messages cannot
share a process); their answers must equal ``/predict_batch``'s, their errors REST v2's. Then a
Hypothesis fuzz sends bytes that are not protobuf and well-formed messages with wrong contents,
and accepts only the documented status codes from a server that stays up.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handserve import artifacts
from handserve.images import decode_image
from tests.service.helpers import digit_png, predict_batch_scores

pytestmark = [pytest.mark.server, pytest.mark.slow]

# The kserve SDK's generated messages: the session imports the SDK anyway (its REST tests),
# and they are the same messages on the wire as tritonclient's (package ``inference``).
pb = pytest.importorskip(
    "kserve.protocol.grpc.grpc_predict_v2_pb2", reason="the kserve SDK is not installed"
)

DRIVER = Path(__file__).with_name("v2_grpc_driver.py")
REPO = Path(__file__).resolve().parents[2]
SEEDS = [21, 22, 23]
MODEL = "digits"
#: What the server may answer a malformed call with (docs/service.md, "gRPC").
DOCUMENTED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}


def _drive(client: str, server: Any) -> dict[str, Any]:
    manifest = artifacts.read_manifest(server.models_dir / MODEL / "2")
    pixels = np.stack([decode_image(digit_png(s), manifest.input.image_spec) for s in SEEDS])
    spec = {
        "address": server.grpc,
        "model": MODEL,
        "ready_models": [MODEL, "tiny", "broken", "no-such-model"],
        "pixels": pixels.tolist(),
        "pngs": [base64.b64encode(digit_png(s)).decode() for s in SEEDS],
    }
    done = subprocess.run(
        [sys.executable, str(DRIVER), client],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout))


@pytest.fixture(scope="module")
def triton(server) -> dict[str, Any]:
    return _drive("triton", server)


@pytest.fixture(scope="module")
def kserve_grpc(server) -> dict[str, Any]:
    return _drive("kserve", server)


@pytest.fixture(scope="module")
def expected(server) -> np.ndarray:
    """``/predict_batch``'s scores for the test images, every class, in index order."""
    return predict_batch_scores(server.url, MODEL, [digit_png(s) for s in SEEDS])


def test_triton_client_sees_the_server_and_its_models(triton, server) -> None:
    assert triton["live"] is True and triton["ready"] is True
    # served models are ready; a model refused at load (a flipped byte) and an unknown one not
    assert triton["model_ready"] == {
        MODEL: True,
        "tiny": True,
        "broken": False,
        "no-such-model": False,
    }
    assert set(triton["server"]["extensions"]) >= {"classification"}
    rest = requests.get(f"{server.url}/v2/models/{MODEL}").json()
    meta = triton["metadata"]
    assert (meta["name"], meta["versions"], meta["platform"]) == (
        rest["name"],
        rest["versions"],
        rest["platform"],
    )
    # protobuf's JSON writes int64 shapes as strings
    for got, want in zip(
        meta["inputs"] + meta["outputs"], rest["inputs"] + rest["outputs"], strict=True
    ):
        assert (got["name"], got["datatype"]) == (want["name"], want["datatype"])
        assert [int(d) for d in got["shape"]] == want["shape"]


@pytest.mark.parametrize("form", ["uint8", "fp32", "bytes"])
def test_triton_client_answers_equal_predict_batch(triton, expected, form) -> None:
    np.testing.assert_allclose(np.asarray(triton[form]), expected, atol=1e-6)


def test_triton_client_gets_classification_strings_and_its_request_id(triton, expected) -> None:
    assert triton["id"] == "req-7"
    for row, scores in zip(triton["classification"], expected, strict=True):
        indices = [int(s.split(":")[1]) for s in row]
        assert indices == list(np.argsort(-scores, kind="stable")[:3])
        assert [float(s.split(":")[0]) for s in row] == pytest.approx(scores[indices], abs=1e-6)


def test_errors_have_their_status_and_the_rest_message(triton, server) -> None:
    errors = triton["errors"]
    assert errors["unknown_model"][0] == "StatusCode.NOT_FOUND"
    for case in ("shape", "datatype", "too_many", "not_an_image"):
        assert errors[case] is not None and errors[case][0] == "StatusCode.INVALID_ARGUMENT", case
    # the same request over REST v2 is refused with the same message
    body = {"inputs": [{"name": "image", "shape": [1, 5, 5, 1], "datatype": "UINT8",
                        "data": [0] * 25}]}  # fmt: skip
    rest = requests.post(f"{server.url}/v2/models/{MODEL}/infer", json=body)
    assert rest.status_code == 400
    assert errors["shape"][1] == rest.json()["error"]
    assert "over the limit of 64" in errors["too_many"][1]


def test_kserve_grpc_client_typed_and_raw_contents(kserve_grpc, expected) -> None:
    assert kserve_grpc["live"] and kserve_grpc["ready"]
    assert kserve_grpc["model_ready"]["broken"] is False and kserve_grpc["model_ready"][MODEL]
    for key in ("uint8_raw", "uint8_typed", "fp32_raw", "fp32_typed", "bytes_raw"):
        np.testing.assert_allclose(np.asarray(kserve_grpc[key]), expected, atol=1e-6, err_msg=key)
    assert kserve_grpc["id"] == "k-1"
    assert kserve_grpc["shape_error"][0] == "INVALID_ARGUMENT"
    assert "this model takes [N, " in kserve_grpc["shape_error"][1]


def test_grpc_calls_and_refusals_are_counted(triton, server) -> None:
    text = requests.get(server.url + "/metrics").text
    ok = 'handserve_grpc_requests_total{code="OK",method="ModelInfer"}'
    refused = 'handserve_grpc_requests_total{code="INVALID_ARGUMENT",method="ModelInfer"}'
    assert ok in text and refused in text
    assert 'handserve_rejected_inputs_total{reason="not_an_image"}' in text


# ---------------------------------------------------------------------- fuzz
@pytest.fixture(scope="module")
def channel(server) -> Any:
    with grpc.insecure_channel(server.grpc) as ch:
        yield ch


def _call(channel: Any, data: bytes) -> grpc.StatusCode:
    method = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    try:
        method(data, timeout=30)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def _alive(server: Any) -> None:
    assert requests.get(server.url + "/livez", timeout=5).status_code == 200
    assert requests.get(server.url + "/readyz", timeout=5).status_code == 200


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.binary(max_size=256))
def test_fuzz_bytes_that_are_not_a_message(channel, server, data) -> None:
    try:
        pb.ModelInferRequest.FromString(data)
    except Exception:  # not a message: must be INVALID_ARGUMENT, never INTERNAL
        assert _call(channel, data) == grpc.StatusCode.INVALID_ARGUMENT
    else:  # by chance a message (of nothing useful): a documented refusal
        assert _call(channel, data) in DOCUMENTED
    _alive(server)


_DATATYPES = st.sampled_from(["UINT8", "FP32", "BYTES", "INT32", "FP64", "", "uint8", "x" * 40])
_SHAPES = st.lists(st.integers(-3, 2**40), max_size=9)


@st.composite
def _messages(draw: st.DrawFn) -> bytes:
    """Well-formed ModelInferRequests whose contents break the model's contract."""
    request = pb.ModelInferRequest(
        model_name=draw(st.sampled_from([MODEL, "tiny", "broken", "nope", ""])),
        model_version=draw(st.sampled_from(["", "2", "1", "x", "99"])),
        id=draw(st.text(max_size=8)),
    )
    for _ in range(draw(st.integers(0, 2))):
        tensor = request.inputs.add(
            name=draw(st.sampled_from(["image", "image_bytes", "other"])),
            datatype=draw(_DATATYPES),
        )
        tensor.shape.extend(draw(_SHAPES))
        kind = draw(st.sampled_from(["raw", "uint", "fp32", "bytes", "none"]))
        if kind == "raw":
            request.raw_input_contents.append(draw(st.binary(max_size=3000)))
        elif kind == "uint":
            tensor.contents.uint_contents.extend(
                draw(st.lists(st.integers(0, 2**32 - 1), max_size=50))
            )
        elif kind == "fp32":
            tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=50)))
        elif kind == "bytes":
            tensor.contents.bytes_contents.extend(
                draw(st.lists(st.binary(max_size=64), max_size=3))
            )
    for _ in range(draw(st.integers(0, 2))):
        out = request.outputs.add(name=draw(st.sampled_from(["probabilities", "x"])))
        if draw(st.booleans()):
            out.parameters["classification"].int64_param = draw(st.integers(-5, 2**40))
    return request.SerializeToString()


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=_messages())
def test_fuzz_messages_with_wrong_contents(channel, server, data) -> None:
    assert _call(channel, data) in {grpc.StatusCode.OK, *DOCUMENTED}
    _alive(server)


def test_a_message_over_the_size_limit_is_refused_by_grpc(channel, server) -> None:
    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="image_bytes", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(b"\0" * (11 * 1024 * 1024))  # over max_body_bytes (10 MiB)
    assert _call(channel, request.SerializeToString()) == grpc.StatusCode.RESOURCE_EXHAUSTED
    _alive(server)


def test_a_message_that_names_no_model_is_not_found(channel) -> None:
    """Over REST the model is part of the path; a gRPC message without one gets no default."""
    request = pb.ModelInferRequest(model_name="")
    request.inputs.add(name="image_bytes", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(len(b"x").to_bytes(4, "little") + b"x")
    assert _call(channel, request.SerializeToString()) == grpc.StatusCode.NOT_FOUND


def test_the_readme_grpc_example_runs_as_written(server) -> None:
    """The README's tritonclient.grpc block, pointed at this server, prints three
    ``score:index:label`` strings for its example image."""
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    (code,) = [b for b in blocks if "tritonclient.grpc" in b]
    assert "localhost:8001" in code
    done = subprocess.run(
        [sys.executable, "-c", code.replace("localhost:8001", server.grpc)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(re.findall(r"b'[0-9.]+:\d+:[^']+'", done.stdout)) == 3, done.stdout
