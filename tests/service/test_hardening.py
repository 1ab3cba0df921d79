"""What an outside probe of the service found, each as a test against the real server.

Every case here answered a 500, a wrong 200, another error shape, or leaked or mixed state
before it was fixed (docs/service.md, "Limits and errors").
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import psutil
import pytest
import requests
from PIL import Image

from service.config import ServiceConfig
from service.local_server import free_port, wait_ready
from tests.conftest import REPO
from tests.service.conftest import BODY_TIMEOUT_S
from tests.service.helpers import copy_version, corrupt, digit_png, inprocess_client

pytestmark = [pytest.mark.server, pytest.mark.slow]


def post_png(url: str, **kwargs) -> requests.Response:
    return requests.post(
        url + "/predict",
        data=digit_png(4),
        headers={"Content-Type": "image/png"},
        timeout=30,
        **kwargs,
    )


def assert_error(resp: requests.Response, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text[:500]
    assert resp.headers["content-type"].startswith("application/json")
    err = resp.json()["error"]
    assert err["code"] == code and isinstance(err["message"], str) and err["message"]
    assert len(err["message"]) < 600  # bounded: never echoes a huge input
    return err


@pytest.mark.parametrize(
    "params",
    [
        {"top_k": "\u00b2"},  # superscript two: str.isdigit() says yes, int() says no
        {"version": "\u00b9"},
        {"top_k": "5" * 5000},  # over Python's 4,300-digit int parsing limit
        {"top_k": "+-5"},
        {"top_k": "\u0663"},  # ARABIC-INDIC DIGIT THREE
    ],
    ids=["superscript", "superscript_version", "5000_digits", "plus_minus", "arabic_digit"],
)
def test_odd_integers_are_422_not_500(server, params) -> None:
    assert_error(post_png(server.url, params={"model": "tiny", **params}), 422, "bad_parameter")


def test_odd_integers_in_json_and_form_are_422(server) -> None:
    image = base64.b64encode(digit_png(1)).decode()
    resp = requests.post(server.url + "/predict", json={"image": image, "top_k": "+-5"})
    assert_error(resp, 422, "bad_parameter")
    resp = requests.post(
        server.url + "/predict", files={"image": digit_png(1)}, data={"top_k": "\u00b2"}
    )
    assert_error(resp, 422, "bad_parameter")


def test_deeply_nested_json_is_400_not_500(server) -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    resp = requests.post(
        server.url + "/predict", data=body, headers={"Content-Type": "application/json"}
    )
    assert_error(resp, 400, "bad_json")


def test_a_million_element_list_is_refused_as_too_many_images(server) -> None:
    body = json.dumps({"images": ["QQ=="] * 1_000_000}).encode()
    resp = requests.post(
        server.url + "/predict_batch", data=body, headers={"Content-Type": "application/json"}
    )
    assert_error(resp, 413, "too_many_images")
    assert post_png(server.url).status_code == 200


def _png16(arr8: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr8.astype(np.uint16) * 257).save(buf, format="PNG")
    return buf.getvalue()


def test_16bit_png_gets_the_answer_of_its_8bit_version(server) -> None:
    for seed in range(4):
        arr = np.asarray(Image.open(io.BytesIO(digit_png(seed)))).astype(np.uint8)
        with Image.open(io.BytesIO(_png16(arr))) as img:
            assert img.mode.startswith("I;16")  # really a 16-bit image on the wire
        answers = [
            requests.post(
                server.url + "/predict?model=tiny&top_k=10",
                data=data,
                headers={"Content-Type": "image/png"},
            ).json()["predictions"]
            for data in (digit_png(seed), _png16(arr))
        ]
        assert answers[0] == answers[1]


def test_postscript_is_refused_before_decoding(server) -> None:
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    resp = requests.post(
        server.url + "/predict?model=tiny", data=eps, headers={"Content-Type": "image/png"}
    )
    err = assert_error(resp, 415, "unsupported_format")
    assert "PostScript" in err["message"]


def _raw_http(url: str, request: bytes, wait_s: float) -> tuple[bytes, float]:
    """Send ``request`` and then nothing; return what the server answered and when."""
    parts = urlsplit(url)
    started = time.monotonic()
    with socket.create_connection((parts.hostname, parts.port), timeout=wait_s) as sock:
        sock.sendall(request)
        data = b""
        try:
            while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) == 0:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            pass
    return data, time.monotonic() - started


@pytest.mark.parametrize("kind", ["short_body", "stalled_chunks"])
def test_a_client_that_stalls_mid_body_gets_408_in_seconds(server, kind) -> None:
    host = urlsplit(server.url).netloc
    if kind == "short_body":
        head = (
            f"POST /predict?model=tiny HTTP/1.1\r\nHost: {host}\r\n"
            "Content-Type: image/png\r\nContent-Length: 5000\r\n\r\n"
        )
        request = head.encode() + digit_png(1)[:100]
    else:
        head = (
            f"POST /predict?model=tiny HTTP/1.1\r\nHost: {host}\r\n"
            "Content-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        request = head.encode() + b"40\r\n" + b"x" * 64 + b"\r\n"
    answer, elapsed = _raw_http(server.url, request, wait_s=BODY_TIMEOUT_S + 10)
    status_line, _, rest = answer.partition(b"\r\n")
    assert b" 408 " in status_line, answer[:300]
    body = json.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "body_timeout"
    assert elapsed < BODY_TIMEOUT_S + 5  # the body timeout, not the 30 s request timeout


def test_errors_outside_the_routes_have_the_same_shape(server) -> None:
    assert_error(requests.get(server.url + "/no/such/path"), 404, "not_found")
    assert_error(requests.delete(server.url + "/predict"), 405, "method_not_allowed")
    assert_error(requests.get(server.url + "/predict"), 405, "method_not_allowed")


def test_no_server_paths_and_no_unbounded_echo(server) -> None:
    text = requests.get(server.url + "/models").text
    assert "broken" in text  # the refused model is listed, with its reason...
    assert str(server.models_dir.resolve()) not in text  # ...but not where the files live
    assert str(Path.home()) not in text and "/tmp/" not in text
    image = base64.b64encode(digit_png(1)).decode()
    resp = requests.post(server.url + "/predict", json={"image": image, "model": "m" * 5_000_000})
    assert_error(resp, 422, "bad_parameter")
    resp = requests.post(server.url + "/predict", json={"image": image, "model": "x" * 100})
    err = assert_error(resp, 404, "unknown_model")
    assert "x" * 100 in err["message"]  # a name within bounds is still named


def test_refused_default_model_is_503_never_another_model(tiny_export: Path, tmp_path: Path):
    models = tmp_path / "models"
    corrupt(copy_version(tiny_export, models, "alpha", 1))  # first by name: the default
    copy_version(tiny_export, models, "beta", 1)
    cfg = ServiceConfig(models_dir=str(models), runtime="litert", warmup_batches=0)
    with inprocess_client(cfg) as (client, _):
        resp = client.post("/predict", content=digit_png(1), headers={"Content-Type": "image/png"})
        assert resp.status_code == 503
        err = resp.json()["error"]
        assert err["code"] == "model_unavailable" and "alpha" in err["message"]
        assert str(models) not in err["message"]
        ok = client.post(
            "/predict?model=beta", content=digit_png(1), headers={"Content-Type": "image/png"}
        )
        assert ok.status_code == 200 and ok.json()["model"] == "beta"
        listed = client.get("/models").json()
        assert listed["default_model"] == "alpha"


def _handserve_serve(models: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "HANDSERVE_RUNTIME": "litert",
        "HANDSERVE_WORKERS": "1",
        "BENTOML_DO_NOT_TRACK": "true",
    }
    env.pop("BENTOML_HOME", None)  # both servers would share the default home
    cmd = [sys.executable, "-c", "import sys; from handserve_cli import main; sys.exit(main())"]
    cmd += ["serve", "--host", "127.0.0.1", "--port", str(port), "--models-dir", str(models)]
    with log.open("wb") as out:
        return subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server (it stops its workers), then SIGKILL whatever is left of it."""
    if proc.poll() is not None:
        return
    family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(family, timeout=20)
    for p in alive:
        p.kill()
    proc.wait(10)


def _predictions_total(url: str) -> float:
    text = requests.get(url + "/metrics", timeout=30).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("handserve_predictions_total{")
    )


def test_two_servers_keep_their_metrics_apart_and_sigterm_stops_the_server(
    server, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    copy_version(server.models_dir / "tiny" / "1", models, "tiny", 1)
    procs = []
    try:
        port_a, port_b = free_port(), free_port()
        url_a, url_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
        procs.append(_handserve_serve(models, port_a, tmp_path / "a.log"))
        wait_ready(url_a, procs[0], timeout=180)
        for _ in range(3):
            assert post_png(url_a).status_code == 200
        assert _predictions_total(url_a) == 3
        procs.append(_handserve_serve(models, port_b, tmp_path / "b.log"))
        wait_ready(url_b, procs[1], timeout=180)
        assert post_png(url_b).status_code == 200
        assert _predictions_total(url_a) == 3  # not wiped or mixed by the second server
        assert _predictions_total(url_b) == 1
        assert post_png(url_a).status_code == 200
        assert _predictions_total(url_a) == 4

        # `handserve serve` is the server itself: SIGTERM to its PID stops every worker.
        workers = psutil.Process(procs[0].pid).children(recursive=True)
        assert workers  # BentoML's worker processes, children of the server
        procs[0].send_signal(signal.SIGTERM)
        procs[0].wait(timeout=60)
        with pytest.raises(requests.ConnectionError):
            requests.get(url_a + "/livez", timeout=5)
        _, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, f"workers of the stopped server still run: {alive}"
    finally:
        for proc in procs:
            _stop(proc)
