"""The load test in load_tests/locustfile.py builds valid requests and runs clean against a server.

Run: ``pytest tests/unit/test_locustfile.py``. A short real run against the session's server
is in ``tests/service/test_locustfile_server.py`` (it needs that folder's ``server`` fixture).

Locust monkey-patches the standard library with gevent when it is imported, which would leak
into every later test of this pytest process; so the locustfile is only ever imported in a
subprocess here.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# find_spec, not importorskip: importing locust here would monkey-patch this process.
if importlib.util.find_spec("locust") is None:
    pytest.skip("locust is not installed", allow_module_level=True)

REPO = Path(__file__).resolve().parents[2]
LOCUSTFILE = REPO / "load_tests" / "locustfile.py"

_PROBE = r"""
import importlib.util, io, json, sys

# The locustfile first, as locust would load it: gevent must patch ssl before requests loads it.
spec = importlib.util.spec_from_file_location("locustfile", sys.argv[1])
lf = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lf)

import requests
from PIL import Image

pngs = lf.digit_pngs()
images = [Image.open(io.BytesIO(p)) for p in pngs]

def prepared(kwargs):
    req = requests.Request("POST", "http://handserve.test/predict", **kwargs).prepare()
    return {"content_type": req.headers.get("Content-Type", ""), "url": req.url,
            "body": req.body.decode("latin-1") if isinstance(req.body, bytes) else str(req.body)}

good = {"model": "m", "version": 1,
        "predictions": [{"label": "7", "index": 7, "score": 0.9},
                        {"label": "1", "index": 1, "score": 0.1}]}
unsorted = dict(good, predictions=list(reversed(good["predictions"])))
batch = {"model": "m", "version": 1, "results": [{"predictions": good["predictions"]}] * 2}
error = {"error": {"code": "not_an_image", "message": "cannot decode"}}
print(json.dumps({
    "user_tasks": {t.__name__: lf.PredictUser.tasks.count(t) for t in lf.PredictUser.tasks},
    "n_pngs": len(pngs),
    "formats": sorted({im.format for im in images}),
    "modes": sorted({im.mode for im in images}),
    "sizes": sorted({im.size for im in images}),
    "distinct": len(set(pngs)),
    "multipart": prepared(lf.multipart_request(pngs[0])),
    "raw": prepared(lf.raw_request(pngs[0])),
    "raw_body_is_png": lf.raw_request(pngs[0])["data"] == pngs[0],
    "batch": prepared(lf.batch_request(list(pngs[:3]))),
    "checks": {
        "good": lf.check_response(200, good),
        "unsorted": lf.check_response(200, unsorted),
        "batch_ok": lf.check_response(200, batch, 2),
        "batch_short": lf.check_response(200, batch, 3),
        "error": lf.check_response(400, error),
        "not_json": lf.check_response(200, None),
    },
}))
"""


@pytest.fixture(scope="module")
def probe() -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(LOCUSTFILE)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_locustfile_defines_the_three_weighted_tasks(probe: dict[str, Any]) -> None:
    # Locust lists a task once per unit of weight.
    assert probe["user_tasks"] == {"predict_multipart": 4, "predict_raw": 2, "predict_batch": 1}


def test_payloads_are_distinct_grayscale_pngs(probe: dict[str, Any]) -> None:
    assert probe["formats"] == ["PNG"]
    assert probe["modes"] == ["L"]
    assert probe["sizes"] == [[28, 28]]
    assert probe["distinct"] == probe["n_pngs"] >= 8


def test_requests_are_built_as_the_api_expects(probe: dict[str, Any]) -> None:
    multipart = probe["multipart"]
    assert multipart["content_type"].startswith("multipart/form-data; boundary=")
    assert 'name="file"; filename="digit.png"' in multipart["body"]
    assert 'name="top_k"' in multipart["body"]
    assert "\x89PNG" in multipart["body"]

    raw = probe["raw"]
    assert raw["content_type"] == "image/png"
    assert "top_k=" in raw["url"]
    assert probe["raw_body_is_png"]

    batch = probe["batch"]
    assert batch["content_type"].startswith("multipart/form-data; boundary=")
    assert batch["body"].count('name="files"') == 3


def test_response_checks_accept_good_and_name_bad_answers(probe: dict[str, Any]) -> None:
    checks = probe["checks"]
    assert checks["good"] is None
    assert checks["batch_ok"] is None
    assert "sorted" in checks["unsorted"]
    assert "expected 3 results" in checks["batch_short"]
    assert checks["error"] == "HTTP 400 not_an_image: cannot decode"
    assert checks["not_json"] is not None
