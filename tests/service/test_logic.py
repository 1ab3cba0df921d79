"""Unit tests of the service's logic: parameters, top-k, base64, config, admission, errors."""

from __future__ import annotations

import argparse
import io

import numpy as np
import pytest
from PIL import Image

from handserve.images import ImageDecodeError
from handserve.ranking import top_k
from service import cli as serve_cli
from service import inference
from service.config import ServiceConfig
from service.errors import STATUS, ApiError
from service.inference import Admission
from service.metrics import batch_buckets
from service.parsing import b64decode, parse_params, query_params
from service.schemas import Params


def test_parse_params_accepts_strings_and_ints() -> None:
    assert parse_params({}, "query") == Params()
    got = parse_params({"model": "a", "version": "2", "top_k": 3}, "JSON")
    assert (got.model, got.version, got.top_k) == ("a", 2, 3)


def test_query_strings_are_validated_once_and_refused_every_time() -> None:
    got = query_params(b"model=digits&top_k=3")
    assert (got.model, got.top_k) == ("digits", 3)
    assert query_params(b"model=digits&top_k=3") is got  # the same short string: cached
    long = b"model=digits&" + b"&".join([b"top_k=2"] * 40)  # the last value counts
    assert query_params(long).top_k == 2 and query_params(long) is not query_params(long)
    for _ in range(2):  # a refusal is never cached as an answer
        with pytest.raises(ApiError) as err:
            query_params(b"top_k=0")
        assert err.value.code == "bad_parameter" and err.value.message.startswith("top_k: ")
    with pytest.raises(ApiError) as err:
        query_params(b"colour=red")
    assert err.value.code == "unknown_field"


@pytest.mark.parametrize(
    "raw",
    [
        {"top_k": "x"},
        {"top_k": 0},
        {"top_k": True},
        {"version": "1.5"},
        {"version": 0},
        {"model": 3},
        {"top_k": 2.0},
        # found by probing: str.isdigit() takes superscripts and other scripts' digits, and
        # lstrip("+-") let "+-5" through; each was a 500 with a traceback before
        {"top_k": "\u00b2"},
        {"version": "\u00b9"},
        {"top_k": "\u0663"},
        {"top_k": "+-5"},
        {"top_k": "5" * 5000},
        {"top_k": " 7"},
        {"top_k": "1_0"},
        {"model": "m" * 5_000_000},
    ],
)
def test_parse_params_refuses_bad_values(raw) -> None:
    with pytest.raises(ApiError) as info:
        parse_params(raw, "query")
    assert info.value.code == "bad_parameter" and info.value.status == 422
    assert len(info.value.message) < 300  # never echoes a huge input


def test_unknown_fields_are_named() -> None:
    with pytest.raises(ApiError, match="colour") as info:
        parse_params({"model": "a", "colour": "red"}, "query")
    assert info.value.status == 422 and info.value.code == "unknown_field"


def test_top_k_sorted_clamped_and_stable() -> None:
    scores = np.array([0.1, 0.5, 0.1, 0.3], np.float32)
    labels = ["a", "b", "c", "d"]
    out = top_k(scores, labels, 3)
    assert [p["label"] for p in out] == ["b", "d", "a"]  # the tie keeps index order
    assert out[0] == {"label": "b", "index": 1, "score": pytest.approx(0.5)}
    assert len(top_k(scores, labels, 99)) == 4


def test_b64decode_handles_data_urls_and_refuses_garbage() -> None:
    assert b64decode("aGk=") == b"hi"
    assert b64decode("data:image/png;base64,aGk=") == b"hi"
    for bad in ("@@", 5):
        with pytest.raises(ApiError) as info:
            b64decode(bad, 2)
        assert info.value.code == "bad_base64"


def test_api_error_shape_and_decode_wrapping() -> None:
    err = ApiError.from_decode(ImageDecodeError("truncated", "cut short"), 4)
    assert err.status == 400
    assert err.body() == {"error": {"code": "truncated", "message": "image 4: cut short"}}
    assert STATUS["too_many_pixels"] == 413 and STATUS["unknown_model"] == 404


def test_admission_is_a_bounded_queue() -> None:
    adm = Admission(4, retry_after_s=2)
    adm.acquire(3)
    with pytest.raises(ApiError) as info:
        adm.acquire(2)
    assert info.value.status == 503 and info.value.headers == {"Retry-After": "2"}
    adm.release(3)
    adm.acquire(4)


def test_defaults_are_valid() -> None:
    cfg = ServiceConfig()
    assert cfg.runtime == "auto" and cfg.litert_file == "model.tflite"
    assert batch_buckets(64) == (1, 2, 4, 8, 16, 32, 64)


def test_serve_cli_builds_bentoml_command(tmp_path) -> None:
    parser = argparse.ArgumentParser()
    serve_cli.configure(parser)
    args = parser.parse_args(
        [
            "--port",
            "4321",
            "--models-dir",
            str(tmp_path),
            "--runtime",
            "litert",
            "--versions",
            "a=1",
        ]
    )
    cmd, env = serve_cli.build_command(args)
    assert cmd[-6:] == ["serve", "service.service:HandServe", "--port", "4321", "--host", "0.0.0.0"]
    assert env["HANDSERVE_MODELS_DIR"] == str(tmp_path)
    assert env["HANDSERVE_RUNTIME"] == "litert" and env["HANDSERVE_VERSIONS"] == "a=1"
    bad = parser.parse_args(["--versions", "a=x"])
    assert serve_cli.run(bad) == 2
    assert "HANDSERVE_GRPC_PORT" not in env  # gRPC is off unless asked for
    grpc = parser.parse_args(["--grpc-port", "8001", "--host", "127.0.0.1"])
    _, env = serve_cli.build_command(grpc)
    assert (env["HANDSERVE_GRPC_PORT"], env["HANDSERVE_GRPC_HOST"]) == ("8001", "127.0.0.1")


def test_serve_cli_names_the_bad_flag(capsys) -> None:
    parser = argparse.ArgumentParser()
    serve_cli.configure(parser)
    assert serve_cli.run(parser.parse_args(["--grpc-port", "70000"])) == 2
    assert "--grpc-port: grpc_port must be <= 65535, got 70000" in capsys.readouterr().err


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height), 0).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def test_inline_decode_only_for_few_bytes_and_few_pixels() -> None:
    """The event loop decodes only small images; the cap is read from the header."""
    from handserve.artifacts import InputContract, Manifest

    class Model:  # what decode_all reads of a loaded model
        manifest = Manifest("m", 1, ["a"], InputContract(28, 28, 1), {}, [])
        spec = manifest.input.image_spec
        hands = None  # an image model

    limits = inference.InlineLimits(bytes=16 * 1024, pixels=256 * 256)
    small, flat_big = _png(28, 28), _png(3000, 3000)
    assert len(flat_big) < limits.bytes  # a flat image compresses to almost nothing
    out = inference.decode_all([small, small], Model(), 10**8, None, inline=limits)
    assert out.shape == (2, 28, 28, 1)
    with pytest.raises(inference._TooBigForInline):  # its decode would stall the event loop
        inference.decode_all([flat_big], Model(), 10**8, None, inline=limits)
    with pytest.raises(inference._TooBigForInline):
        inference.decode_all([small, b"x" * limits.bytes], Model(), 10**8, None, inline=limits)
    # off the loop the same image decodes, and the real cap still refuses with its own code
    assert inference.decode_all([flat_big], Model(), 10**8, None).shape == (1, 28, 28, 1)
    with pytest.raises(ApiError) as info:
        inference.decode_all([flat_big], Model(), 1000, None, inline=limits)
    assert info.value.code == "too_many_pixels"


def test_openapi_lists_every_error_status() -> None:
    from service.service import ERRORS

    assert set(STATUS.values()) <= set(ERRORS)
    assert "too_many_pixels" in ERRORS[413]["description"]
