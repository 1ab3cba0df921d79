"""The load test in load_tests/locustfile.py builds valid requests, shapes the load as its
``--shape`` says (ramp, spike, constant) and judges a run by its thresholds.

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
from typing import Any

import pytest

from tests.conftest import REPO

# find_spec, not importorskip: importing locust here would monkey-patch this process.
if importlib.util.find_spec("locust") is None:
    pytest.skip("locust is not installed", allow_module_level=True)

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
import argparse, time, types

def ticks(shape, users, rate, run_time, seconds):
    s = lf.StagedShape()
    opts = argparse.Namespace(shape=shape, num_users=users, spawn_rate=rate, run_time=run_time)
    s.runner = types.SimpleNamespace(environment=types.SimpleNamespace(parsed_options=opts))
    out = []
    for t in seconds:
        s.start_time = time.perf_counter() - t  # as if the run had lasted t seconds
        out.append(s.tick())
    return out

try:
    lf.stages("sawtooth", 10, 1, 60)
    bad_shape = None
except ValueError as exc:
    bad_shape = str(exc)

print(json.dumps({
    "shape_classes": [n for n, v in vars(lf).items()
                      if isinstance(v, type) and issubclass(v, lf.LoadTestShape)
                      and v is not lf.LoadTestShape],
    "ramp": ticks("ramp", 32, 8, 60, [0, 14, 16, 31, 46, 59, 61]),
    "spike": ticks("spike", 40, 5, 100, [0, 29, 31, 59, 61, 99, 101]),
    "constant_timed": ticks("constant", 6, 2, 10, [0, 9, 11]),
    "constant_open": ticks("constant", 6, 2, 0, [0, 3600]),
    "ramp_untimed": ticks("ramp", 8, 2, 0, [0, 59, 61]),
    "bad_shape": bad_shape,
    "breaches": {
        "met": lf.breaches(1000, 5, 120, 250, 1.0),
        "slow": lf.breaches(1000, 0, 300, 250, 1.0),
        "errors": lf.breaches(1000, 20, 120, 250, 1.0),
        "both": lf.breaches(100, 50, 999, 250, 1.0),
        "no_latency_gate": lf.breaches(1000, 0, 99999, 0, 1.0),
        "nothing_sent": lf.breaches(0, 0, 0, 250, 1.0),
    },
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


def test_one_shape_class_that_locust_will_pick(probe: dict[str, Any]) -> None:
    """Locust runs the first LoadTestShape it finds: there must be exactly the selectable one."""
    assert probe["shape_classes"] == ["StagedShape"]


def test_ramp_climbs_in_four_steps_then_stops(probe: dict[str, Any]) -> None:
    users = [t if t is None else t[0] for t in probe["ramp"]]
    # 60 s in four 15 s steps of 8 users each; None ends the run.
    assert users == [8, 8, 16, 24, 32, 32, None]


def test_spike_jumps_to_all_users_at_once_and_back(probe: dict[str, Any]) -> None:
    assert probe["spike"] == [
        [4, 5.0],  # a tenth of the users for the first 30% of the run
        [4, 5.0],
        [40, 40.0],  # all of them, spawned within a second, for the middle 30%
        [40, 40.0],
        [4, 40.0],  # back down at once
        [4, 40.0],
        None,
    ]


def test_constant_is_plain_locust(probe: dict[str, Any]) -> None:
    assert probe["constant_timed"] == [[6, 2.0], [6, 2.0], None]
    assert probe["constant_open"] == [[6, 2.0], [6, 2.0]]  # no -t: until stopped
    assert probe["ramp_untimed"] == [[2, 2.0], [8, 2.0], None]  # shapes default to 60 s


def test_an_unknown_shape_names_the_flag(probe: dict[str, Any]) -> None:
    assert "--shape/LOCUST_SHAPE" in probe["bad_shape"]
    assert "sawtooth" in probe["bad_shape"]


def test_threshold_breaches_name_what_and_which_flag(probe: dict[str, Any]) -> None:
    b = probe["breaches"]
    assert b["met"] == []  # 0.5% errors and p95 120 ms are inside 1% and 250 ms
    assert b["slow"] == ["p95 300 ms > 250 ms (--max-p95-ms)"]
    assert b["errors"] == ["error rate 2.00% > 1% (--max-error-pct)"]
    assert len(b["both"]) == 2
    assert b["no_latency_gate"] == []
    assert b["nothing_sent"] and "no request" in b["nothing_sent"][0]
