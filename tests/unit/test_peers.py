"""benchmarks/peers.py's pieces without the peers: reading ``hey``'s report, the tables, the
request bodies each peer is sent, and KServe's model class answering a real (tiny) export, also
after the pickling ``ModelServer(workers=2)`` puts it through. No server starts, nothing is timed.
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks import peers
from handserve import artifacts
from handserve.images import decode_image
from tests.conftest import REPO
from tests.unit.test_runtimes import CLASSES, SIZE, _convert, reference

#: hey 0.1.4's report (Debian's), cut to what is read: 3 answers were 503, 2 requests failed.
HEY = """
Summary:
  Total:\t8.0042 secs
  Slowest:\t0.1203 secs
  Fastest:\t0.0011 secs
  Average:\t0.0164 secs
  Requests/sec:\t487.3376

Latency distribution:
  10% in 0.0032 secs
  25% in 0.0061 secs
  50% in 0.0127 secs
  75% in 0.0218 secs
  90% in 0.0321 secs
  95% in 0.0410 secs
  99% in 0.0815 secs

Status code distribution:
  [200]\t3893 responses
  [503]\t3 responses

Error distribution:
  [2]\tPost "http://127.0.0.1:9/predict": dial tcp 127.0.0.1:9: connect: connection refused
"""


def test_heys_report_is_read_with_every_failure_counted() -> None:
    cell = peers.parse_hey(HEY)
    assert (cell.rps, cell.non_200, cell.answers) == (487.3376, 5, 3896)
    assert (cell.p50_ms, cell.p99_ms) == (pytest.approx(12.7), pytest.approx(81.5))
    clean = HEY.replace("  [503]\t3 responses\n", "").split("Error distribution")[0]
    assert peers.parse_hey(clean).non_200 == 0
    with pytest.raises(ValueError, match="Requests/sec"):
        peers.parse_hey("Error: connection refused")


def test_the_ratio_is_handserves_mean_over_its_two_runs() -> None:
    def cell(rps: float, p99: float) -> peers.Cell:
        return peers.Cell(rps, 1.0, p99, 0)

    rows = [
        ("handserve", 1, cell(100, 10)),
        ("handserve", 8, cell(300, 40)),
        ("kserve", 1, cell(110, 12)),
        ("kserve", 8, cell(200, 80)),
        ("handserve (again)", 1, cell(120, 14)),
        ("handserve (again)", 8, cell(340, 60)),
    ]
    table = peers.format_table(rows).splitlines()
    assert table[0].startswith("| server | clients | requests/s")
    assert "| kserve | 8 | 200.0 | 1.0 | 80.0 | 0 | nan |" in table
    ratios = peers.format_ratios(rows, [1, 8]).splitlines()
    assert ratios[0] == "| handserve / peer | 1 | 8 |"
    # (100 + 120) / 2 / 110 = 1.00; (300 + 340) / 2 / 200 = 1.60; p99 means 12 and 50
    assert ratios[2] == "| kserve | 1.00 (p99 12/12) | 1.60 (p99 50/80) |"


def test_the_triton_request_is_a_json_header_then_the_length_prefixed_file() -> None:
    image = b"\x89PNG not really"
    body, head = peers.triton_body(image)
    header = json.loads(body[:head])
    (tensor,) = header["inputs"]
    assert tensor["datatype"] == "BYTES" and tensor["shape"] == [1, 1]
    rest = body[head:]
    assert tensor["parameters"]["binary_data_size"] == len(rest)
    assert struct.unpack("<I", rest[:4]) == (len(image),) and rest[4:] == image


def test_each_servers_answer_gives_its_top_label() -> None:
    answers = {
        "handserve": {"predictions": [{"label": "7", "score": 0.9}]},
        "naive": {"label": "7", "index": 7, "score": 0.9},
        "kserve": {"predictions": [{"label": "7", "index": 7, "score": 0.9}]},
        "triton": {"outputs": [{"name": "index", "data": [7]}, {"name": "label", "data": ["7"]}]},
    }
    for server, answer in answers.items():
        assert peers.top_label(server, json.dumps(answer).encode()) == "7", server


@pytest.fixture(scope="module")
def tiny_version(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/tiny/1 holding only a tiny float ``model.tflite`` (4x4 grey) and its manifest."""
    folder = tmp_path_factory.mktemp("peers") / "tiny" / "1"
    folder.mkdir(parents=True)
    served = artifacts.TFLITE_FP32
    _convert(folder / served.path, 1)
    artifacts.write_manifest(
        folder,
        artifacts.Manifest(
            name="tiny",
            version=1,
            labels=["a", "b", "c"][:CLASSES],
            input=artifacts.InputContract(SIZE, SIZE, 1),
            formats={served.key: artifacts.FormatEntry(served.path, "tflite", "float32")},
            files=artifacts.file_entries(folder),
        ),
    )
    return folder


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def test_kserves_model_answers_v1_with_the_models_top_label_before_and_after_pickling(
    tiny_version: Path,
) -> None:
    from benchmarks.peers_kserve import KServeClassifier

    model = KServeClassifier("tiny", tiny_version)
    spec = artifacts.read_manifest(tiny_version).input.image_spec
    for seed in range(4):
        image = png(seed)
        want = reference(decode_image(image, spec)[None])[0]
        payload = json.loads(peers.kserve_body(image))
        (answer,) = model.predict(payload)["predictions"]
        assert answer["index"] == int(np.argmax(want)) and answer["label"] == "abc"[answer["index"]]
        assert answer["score"] == pytest.approx(float(want.max()), abs=1e-5)
    # ModelServer pickles the model into each spawned worker: the interpreter is reopened there.
    state = model.__getstate__()
    assert state["model"] is None
    copy = pickle.loads(pickle.dumps(model))
    assert copy.model is not model.model and copy.ready
    payload = json.loads(peers.kserve_body(png(9)))
    assert copy.predict(payload) == model.predict(payload)


def test_a_batch_is_one_call_with_the_same_answers(tiny_version: Path) -> None:
    """Triton's batcher hands several images over at once; the batch size can change each call."""
    from benchmarks.peer_model import LiteRTClassifier

    model = LiteRTClassifier(tiny_version)
    images = [png(seed) for seed in range(5)]
    one_by_one = [model.classify([image])[0] for image in images]

    def same(got: list[dict]) -> None:
        assert [g["label"] for g in got] == [o["label"] for o in one_by_one[: len(got)]]
        assert [g["score"] for g in got] == pytest.approx(
            [o["score"] for o in one_by_one[: len(got)]], abs=1e-6
        )

    same(model.classify(images))
    same(model.classify(images[:2]))
    assert len({o["label"] for o in one_by_one}) > 1  # the images do not all look alike


def test_the_sample_image_is_the_exports_first_sample(tmp_path: Path, tiny_version: Path) -> None:
    folder = tmp_path / "tiny" / "1"
    shutil.copytree(tiny_version, folder)
    pixels = np.arange(SIZE * SIZE, dtype=np.uint8).reshape(1, SIZE, SIZE, 1)
    np.savez(folder / artifacts.SAMPLES, x=pixels, y=np.zeros(1))
    image, ctype = peers.sample_image(folder)
    assert ctype == "image/png"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(image))), pixels[0, ..., 0])


def test_a_profile_is_split_into_layers_without_the_waits(tmp_path: Path) -> None:
    """benchmarks/profile_split.py on py-spy's raw format: waits left out, each sample counted
    for the innermost layer its stack meets."""
    from benchmarks import profile_split

    site = "/venv/lib/python3.11/site-packages"
    raw = tmp_path / "worker.raw"
    raw.write_text(
        "\n".join(
            [
                "MainThread;run (asyncio/runners.py:1);"
                f"invoke ({site}/ai_edge_litert/interpreter.py:9) 6",
                f"MainThread;__call__ ({site}/starlette/routing.py:3);"
                "__call__ (/repo/service/deadline.py:5);"
                f"labels ({site}/prometheus_client/metrics.py:7) 3",
                f"MainThread;__call__ ({site}/starlette/routing.py:3) 1",
                "Thread-1;wait (/usr/lib/python3.11/threading.py:2);"
                "Condition.wait (threading.py:4) 50",
                f"MainThread;send ({site}/uvicorn/protocols/http/x.py:1);"
                f"RequestResponseCycle.send ({site}/uvicorn/protocols/http/httptools_impl.py:8) 40",
            ]
        )
    )
    work, leaves, layers = profile_split.split(profile_split.read_raw(raw))
    assert work == 10
    assert layers["LiteRT (invoke, set_tensor)"] == 6
    assert layers["metrics (prometheus_client, timing middlewares)"] == 3  # inside the middleware
    assert layers["FastAPI, Starlette, pydantic"] == 1
    assert leaves["labels (prometheus_client/metrics.py)"] == 3


def test_litert_batching_prints_a_row_per_batch_size(
    tiny_version: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """benchmarks/"litert_batching.py" run for a moment on a tiny export: a table row per batch
    size, each with its ratio to batch 1 (1.00 for batch 1 itself)."""
    from benchmarks import litert_batching

    litert_batching.main(
        [str(tiny_version), "--batches", "1", "4", "--rounds", "1", "--seconds", "0.2"]
    )
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| batch |")
    body = rows[1:]  # the separator row starts "|---"
    assert [r.split("|")[1].strip() for r in body] == ["1", "4"]
    assert body[0].split("|")[3].strip() == "1.00"


def test_the_pytriton_server_script_is_valid_python_importing_only_its_side_environment() -> None:
    """benchmarks/"peers_triton.py" runs only in PyTriton's own virtualenv (numpy < 2), which
    make test does not build; here: it compiles, and beside pytriton it imports only the
    project's shared model (benchmarks/"peer_model.py", tested above) and the standard
    library, so what it serves is the code tested here. benchmarks/"peers.py" and
    benchmarks/"peers_kserve.py" and benchmarks/"profile_split.py" are tested above."""
    import ast

    source = (REPO / "benchmarks" / "peers_triton.py").read_text()
    tree = ast.parse(source)
    compile(source, "peers_triton.py", "exec")
    imported = {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    } | {
        a.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for a in node.names
    }
    assert imported <= {"__future__", "sys", "pathlib", "numpy", "pytriton", "benchmarks"}
