"""The serving benchmarks run as a user runs them (``python benchmarks/NAME.py``, each starting
its own ``bentoml serve``) for a few seconds on the tiny model, so that a crash on what a fresh
clone installs (a package missing from the lock, a renamed library API) fails CI. What they
check themselves (no 5xx, answers equal to the model run directly) is asserted; their speed
figures are not.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from handserve import artifacts
from tests.bench_scripts import run_benchmark
from tests.service.helpers import digit_png

pytestmark = [pytest.mark.slow, pytest.mark.server]


def table_rows(stdout: str) -> list[list[str]]:
    """The cells of every Markdown table row printed (header and rule lines included)."""
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in stdout.splitlines()
        if line.startswith("|")
    ]


@pytest.fixture(scope="module")
def bench_models(tiny_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = tmp_path_factory.mktemp("bench") / "models"
    shutil.copytree(tiny_export, models / "tiny" / tiny_export.name)
    return models


def test_serve_bench_measures_every_protocol_without_failures(bench_models: Path) -> None:
    done = run_benchmark(
        "serve_bench.py",
        *("--models-dir", str(bench_models), "--seconds", "1", "--concurrency", "2"),
        *("--batch-images", "2", "--protocols", "image", "v2-tensor", "v2-bytes"),
        *("grpc-tensor", "grpc-bytes"),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    cells = [r for r in table_rows(done.stdout) if len(r) == 10 and r[1] == "2"]
    assert len(cells) == 10, done.stdout  # single and batch requests, for each of 5 protocols
    for kind, _, rps, _, _, _, _, failures, _, split in cells:
        assert float(rps) > 0 and failures == "0", (kind, rps, failures)
        # every worker process's share of the CPU, adding up to about 100
        assert 98 <= sum(int(s) for s in split.split("/")) <= 102, (kind, split)
    assert any(r[0].startswith("in-process LiteRT") for r in table_rows(done.stdout))


def test_reliability_finds_no_5xx_and_no_wrong_answer(bench_models: Path) -> None:
    done = run_benchmark(
        "reliability.py",
        *("--models-dir", str(bench_models), "--seconds", "3", "--concurrency", "2"),
    )
    # exit 1 means a 5xx or a good image answered differently from the model run directly
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    memory = {r[0]: float(r[1]) for r in table_rows(done.stdout) if len(r) == 3 and r[2].isdigit()}
    # the server's processes were found by their listening socket (psutil) and measured
    assert set(memory) == {"start", "after warm-up", "end"} and min(memory.values()) > 0


def test_serve_accuracy_scores_a_class_folder_over_http(bench_models: Path, tmp_path: Path) -> None:
    labels = artifacts.read_manifest(bench_models / "tiny" / "1").labels
    data = tmp_path / "test"
    for seed, label in enumerate(labels[:3]):
        (data / label).mkdir(parents=True)
        (data / label / f"{seed}.png").write_bytes(digit_png(seed))
    args = ("--models-dir", str(bench_models), "--model", "tiny", "--data-dir", str(data))
    done = run_benchmark("serve_accuracy.py", *args)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "model tiny version 1: 3 images" in done.stdout, done.stdout
    recalls = [r for r in table_rows(done.stdout) if len(r) == 3 and r[1] == "1"]
    assert sorted(r[0] for r in recalls) == sorted(labels[:3])
    assert re.search(r"^served accuracy: [01]\.\d{4} \(\d wrong\)$", done.stdout, re.M)

    (data / "not-a-label").mkdir()
    (data / "not-a-label" / "x.png").write_bytes(digit_png(9))
    refused = run_benchmark("serve_accuracy.py", *args)
    assert refused.returncode == 1
    assert "not-a-label" in refused.stderr and "not labels of tiny" in refused.stderr


@pytest.mark.browser
def test_demo_camera_reads_the_fake_camera_in_every_mode(bench_models: Path) -> None:
    """The camera demo's benchmark: headless Chromium with a video as its camera, each mode."""
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("/usr/bin/chromium is absent (apt-get install chromium, or run make test)")
    vendored = Path(__file__).resolve().parents[2] / "service/static/vendor/litertjs/core/index.js"
    if not vendored.is_file():
        pytest.skip("LiteRT.js is not vendored (scripts/vendor-web.sh)")
    done = run_benchmark(
        "demo_camera.py",
        *("--models-dir", str(bench_models), "--model", "tiny", "--seconds", "3"),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {r[0]: r for r in table_rows(done.stdout) if len(r) == 7}
    for mode in ("server", "device", "both"):
        assert float(rows[mode][1]) > 0, rows  # frames a second
        assert int(rows[mode][4]) > 0, rows  # frames read
    agreed, both = rows["both"][6].split(" ")[0].split("/")
    assert int(both) > 0 and int(agreed) <= int(both), rows["both"]
    assert "landmarks" not in rows  # only a hand-feature model reads landmarks
