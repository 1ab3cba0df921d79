"""The Bentos: what they pack, that a build without a model is refused, and that the built CPU
Bento starts the way a container would run it (its own requirements in a fresh environment, a
non-root user, a read-only Bento folder) and predicts. The SavedModel runtime serves too.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import bentoml
import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from handserve.artifacts import ArtifactError, load_verified
from handserve.images import decode_image
from handserve.runtimes import open_runtime
from service.bento_guard import ALLOW_ENV
from service.local_server import serving, wait_ready
from tests.conftest import REPO
from tests.lockfile import REQUIREMENTS, pins
from tests.service.helpers import corrupt, digit_png, running_server

PROJECT_FILES = (
    "bentofile.yaml",
    "bentofile-gpu.yaml",
    "requirements",
    "handserve",
    "service",
    "models/README.md",
)
#: Every package the service imports (or uvicorn uses) must reach the image.
PACKAGES = (
    "bentoml",
    "ai-edge-litert",
    "numpy",
    "pillow",
    "pillow-heif",
    "pyyaml",
    "prometheus-client",
    "fastapi",
    "pydantic",
    "pydantic-settings",
    "uvloop",
    "httptools",
)
NOBODY = 65534


def make_project(root: Path, export: Path | None = None, *, broken: bool = False) -> Path:
    """A copy of the project as a user builds it: sources, bentofiles, models/ (maybe empty).

    With ``export``, it is ``models/tiny/1`` (one byte of model.tflite flipped if ``broken``),
    next to a half-written ``.staging-*`` folder that must never be packed.
    """
    project = root / "project"
    for rel in PROJECT_FILES:
        src, dst = REPO / rel, project / rel
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    if export is not None:
        version = project / "models" / "tiny" / "1"
        shutil.copytree(export, version)
        shutil.copytree(export, project / "models" / "tiny" / ".staging-abc")
        if broken:
            corrupt(version)
    return project


def build(
    project: Path, home: Path, bentofile: str = "bentofile.yaml", **env: str
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != ALLOW_ENV}
    environ.update(BENTOML_HOME=str(home), BENTOML_DO_NOT_TRACK="true", **env)
    return subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "-f", str(project / bentofile), str(project)],
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=project,
    )


def the_bento(home: Path, name: str) -> Path:
    (bento,) = (home / "bentos" / name).glob("*/bento.yaml")
    return bento.parent


def _bento_pins(bento: Path, locked: str) -> dict[str, str]:
    """The Bento's ``requirements.txt`` as pins, which must be exactly ``requirements/<locked>``:
    BentoML adds a line pinning the BentoML that built it, which must be the locked one."""
    path = bento / "env" / "python" / "requirements.txt"
    reqs = pins(path.read_text(), source=str(path))
    assert reqs == pins((REQUIREMENTS / locked).read_text(), source=locked)
    assert reqs["bentoml"] == bentoml.__version__
    return reqs


def model_files(bento: Path) -> set[str]:
    models = bento / "src" / "models"
    return {str(p.relative_to(models)) for p in models.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def cpu_bento(tiny_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cpu_bento")
    result = build(make_project(root, tiny_export), root / "home")
    assert result.returncode == 0, result.stderr[-3000:]
    return the_bento(root / "home", "handserve")


def test_server_checks_every_present_file_and_needs_its_runtimes(
    tiny_export: Path, tmp_path: Path
) -> None:
    """What a Bento leaves out may be absent; what is there must match; what runs must be."""
    version = tmp_path / "models" / "tiny" / "1"
    shutil.copytree(tiny_export, version)
    shutil.rmtree(version / "saved_model")
    manifest = load_verified(version, "litert", "model.tflite")
    with pytest.raises(ArtifactError, match="savedmodel needs it, but it is missing"):
        load_verified(version, "savedmodel", "model.tflite")
    other = next(
        e.path for e in manifest.files if e.path != "model.tflite" and (version / e.path).is_file()
    )
    corrupt(version, other)  # a file LiteRT does not read, but which is there and changed
    with pytest.raises(ArtifactError, match="sha256 differs"):
        load_verified(version, "litert", "model.tflite")


@pytest.mark.slow
def test_cpu_bento_packs_only_what_litert_serving_reads(cpu_bento: Path) -> None:
    meta = yaml.safe_load((cpu_bento / "bento.yaml").read_text())
    assert meta["service"] == "service.service:HandServe"
    assert {e["name"]: e["value"] for e in meta["envs"]}["HANDSERVE_RUNTIME"] == "litert"
    for rel in ("service/service.py", "service/reload.py", "handserve/runtimes.py"):
        assert (cpu_bento / "src" / rel).is_file(), rel
    assert (cpu_bento / "src" / "service" / "static" / "index.html").is_file()
    assert (cpu_bento / "src" / "service" / "v2_grpc.py").is_file()  # the gRPC port's code
    assert not (cpu_bento / "src" / "service" / "local_server.py").exists()  # tests' helper
    assert not (cpu_bento / "src" / "service" / "fake_camera.py").exists()  # tests' helper
    # The demo's camera and, where scripts/vendor-web.sh ran, its browser runtime (device mode)
    static = cpu_bento / "src" / "service" / "static"
    assert {"camera.js", "device.js", "handpipe.js"} <= {p.name for p in static.iterdir()}
    vendored = Path("service/static/vendor/litertjs")
    if (REPO / vendored).is_dir():
        for rel in ("core/index.js", "wasm-utils/index.js", "wasm/litert_wasm_internal.wasm"):
            assert (cpu_bento / "src" / vendored / rel).is_file(), rel
    # No saved_model/, model.keras, other .tflite files, report/, samples.npz or staging folder.
    assert model_files(cpu_bento) == {"README.md", "tiny/1/manifest.json", "tiny/1/model.tflite"}
    version = cpu_bento / "src" / "models" / "tiny" / "1"
    assert load_verified(version, "litert", "model.tflite").name == "tiny"
    with pytest.raises(ArtifactError, match="savedmodel needs it, but it is missing"):
        load_verified(version, "savedmodel", "model.tflite")
    with pytest.raises(ArtifactError, match="needs it, but it is missing"):
        load_verified(version, "litert", "model_fp16.tflite")
    reqs = _bento_pins(cpu_bento, "bento-cpu.txt")
    assert set(PACKAGES) <= set(reqs)
    assert "tensorflow" not in reqs
    assert "FROM python:3.11" in (cpu_bento / "env" / "docker" / "Dockerfile").read_text()


@pytest.mark.slow
def test_gpu_bento_adds_tensorflow_and_the_saved_model(tiny_export: Path, tmp_path: Path) -> None:
    result = build(make_project(tmp_path, tiny_export), tmp_path / "home", "bentofile-gpu.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    bento = the_bento(tmp_path / "home", "handserve-gpu")
    meta = yaml.safe_load((bento / "bento.yaml").read_text())
    assert {e["name"]: e["value"] for e in meta["envs"]}["HANDSERVE_RUNTIME"] == "savedmodel"
    files = model_files(bento)
    assert {"README.md", "tiny/1/manifest.json", "tiny/1/saved_model/saved_model.pb"} <= files
    assert {f for f in files if not f.startswith("tiny/1/saved_model/")} == {
        "README.md",
        "tiny/1/manifest.json",
    }
    version = bento / "src" / "models" / "tiny" / "1"
    assert load_verified(version, "savedmodel", "model.tflite").name == "tiny"
    reqs = _bento_pins(bento, "bento-gpu.txt")
    assert {"tensorflow", "nvidia-cudnn-cu12", *PACKAGES} - {"ai-edge-litert"} <= set(reqs)


@pytest.mark.slow
def test_build_refuses_without_a_servable_model(tiny_export: Path, tmp_path: Path) -> None:
    empty = make_project(tmp_path / "empty")
    result = build(empty, tmp_path / "home")
    assert result.returncode != 0
    assert "refusing to build a Bento with no servable model" in result.stderr
    assert ALLOW_ENV in result.stderr
    assert not (tmp_path / "home" / "bentos" / "handserve").exists()

    broken = make_project(tmp_path / "broken", tiny_export, broken=True)
    result = build(broken, tmp_path / "home")
    assert result.returncode != 0
    assert "tiny/1:" in result.stderr and "sha256 differs" in result.stderr

    # The GPU Bento is checked for its own runtime (from its bentofile's environment).
    no_saved_model = make_project(tmp_path / "tflite_only", tiny_export)
    shutil.rmtree(no_saved_model / "models" / "tiny" / "1" / "saved_model")
    result = build(no_saved_model, tmp_path / "home", "bentofile-gpu.yaml")
    assert result.returncode != 0
    assert "savedmodel needs it, but it is missing" in result.stderr

    guard = [sys.executable, "-m", "service.bento_guard", "-f", "bentofile.yaml"]
    checked = subprocess.run(guard, cwd=empty, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 2 and "no servable model" in checked.stderr
    good = make_project(tmp_path / "good", tiny_export)
    checked = subprocess.run(guard, cwd=good, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0 and "serves tiny/1 (litert)" in checked.stdout

    # On purpose: an image for models on a volume.
    result = build(empty, tmp_path / "home", **{ALLOW_ENV: "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert model_files(the_bento(tmp_path / "home", "handserve")) == {"README.md"}


def _as_nobody() -> list[str]:
    """Run as an unprivileged user, as the image does (the tests may run as root)."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def _fresh_venv(requirements: Path, where: Path) -> Path:
    """A virtual environment with exactly the Bento's requirements, from the package index."""
    python = shutil.which("python3.11", path="/usr/bin:/usr/local/bin") or sys.executable
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    venv = where / "venv"
    if uv:
        subprocess.run([uv, "venv", "-q", "--python", python, str(venv)], check=True)
        install = [uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python")]
    else:
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        install = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    done = subprocess.run(
        [*install, "-r", str(requirements)], capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return venv


@pytest.fixture(scope="module")
def bento_venv(cpu_bento: Path) -> Iterator[Path]:
    """The CPU Bento's fresh environment, in a folder every user may read (as in the image)."""
    root = Path(tempfile.mkdtemp(prefix="handserve-bento-venv-"))
    try:
        root.chmod(0o755)
        yield _fresh_venv(cpu_bento / "env" / "python" / "requirements.txt", root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _image_env(venv: Path, scratch: Path, **extra: str) -> dict[str, str]:
    """The environment a container of the image gives a server: the Bento's environment on
    PATH, an unwritable HOME, writable places only under ``scratch``, and ``extra``."""
    return {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": "/nonexistent",
        "TMPDIR": str(scratch),
        "BENTOML_HOME": str(scratch / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        **extra,
    }


@contextlib.contextmanager
def _serve_as_nobody(
    venv: Path, target: str, cwd: Path, env: dict[str, str], scratch: Path
) -> Iterator[str]:
    """``bentoml serve TARGET`` with ``venv``'s Python as uid 65534 (when root), ready."""
    argv = [str(venv / "bin" / "python"), "-m", "bentoml", "serve", target]
    log = scratch / "server.log"
    with serving(argv, env=env, cwd=cwd, log_path=log, prefix=_as_nobody()) as (url, proc):
        wait_ready(url, proc, timeout=150, log_path=log)
        yield url


@pytest.mark.server
@pytest.mark.slow
def test_built_bento_serves_from_its_own_requirements_as_non_root(
    cpu_bento: Path, bento_venv: Path
) -> None:
    """Stands in for the container: a fresh environment with only the Bento's requirements,
    uid 65534, a read-only Bento folder; it must start, turn ready and predict."""
    root = Path(tempfile.mkdtemp(prefix="handserve-bento-run-"))
    try:
        root.chmod(0o755)  # the unprivileged user reads the Bento here
        venv = bento_venv
        bento = root / "bento"
        shutil.copytree(cpu_bento, bento)
        subprocess.run(["chmod", "-R", "a+rX,a-w", str(bento)], check=True)
        scratch = root / "scratch"
        scratch.mkdir()
        if _as_nobody():
            os.chown(scratch, NOBODY, NOBODY)
        meta = yaml.safe_load((bento / "bento.yaml").read_text())
        env = _image_env(venv, scratch, **{e["name"]: e["value"] for e in meta["envs"]})
        with _serve_as_nobody(venv, str(bento), bento, env, scratch) as url:
            r = requests.post(url + "/predict", files={"image": digit_png(4)}, timeout=30)
            assert r.status_code == 200, r.text
            body = r.json()
            assert (body["model"], body["version"]) == ("tiny", 1)
            assert requests.get(url + "/models", timeout=10).json()["models"][0]["runtime"] == (
                "litert"
            )
        # The answer is the model's: the same file run here gives the same best class.
        version = bento / "src" / "models" / "tiny" / "1"
        manifest = load_verified(version, "litert", "model.tflite")
        runtime = open_runtime(version, manifest, runtime="litert")
        pixels = decode_image(digit_png(4), manifest.input.image_spec)[None]
        scores = runtime.predict(pixels)[0]
        best = body["predictions"][0]
        assert best["index"] == int(scores.argmax())
        assert best["score"] == pytest.approx(float(scores.max()), abs=1e-5)
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(root)], check=False)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.server
@pytest.mark.slow
def test_savedmodel_runtime_serves_the_same_answer_in_batches(server, tmp_path: Path) -> None:
    """The GPU path (SavedModel) joins concurrent requests into batches and answers each one."""
    data = digit_png(9)
    want = requests.post(server.url + "/predict?model=tiny&top_k=10", files={"image": data})
    env = {"HANDSERVE_RUNTIME": "savedmodel", "HANDSERVE_WARMUP_BATCHES": "1"}
    images = [digit_png(i) for i in range(6)]
    with running_server(server.models_dir, tmp_path, env) as (url, proc, _):
        wait_ready(url, proc, timeout=180)
        got = requests.post(url + "/predict?model=tiny&top_k=10", files={"image": data})
        models = requests.get(url + "/models").json()["models"]
        singles = {
            i: requests.post(url + "/predict?model=tiny", files={"image": b}).json()
            for i, b in enumerate(images)
        }

        def call(i: int) -> tuple[int, dict]:
            r = requests.post(url + "/predict?model=tiny", files={"image": images[i % 6]})
            return r.status_code, r.json()

        with cf.ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(call, range(32 * 4)))
        text = requests.get(url + "/metrics", timeout=30).text
    assert [code for code, _ in answers] == [200] * len(answers)
    assert all("predictions" in s for s in singles.values()), singles
    for i, (_, body) in enumerate(answers):  # each request gets its own image's answer
        assert body["predictions"][0]["index"] == singles[i % 6]["predictions"][0]["index"]
        assert body["predictions"][0]["score"] == pytest.approx(
            singles[i % 6]["predictions"][0]["score"], abs=1e-5
        )
    sizes = {
        s.name: s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name.startswith("handserve_batch_size_") and s.labels.get("model") == "tiny"
    }
    images_run = len(answers) + len(singles) + 1
    assert sizes["handserve_batch_size_sum"] == images_run
    assert sizes["handserve_batch_size_count"] < images_run  # batches of more than one image
    assert got.status_code == 200
    assert {m["runtime"] for m in models} == {"savedmodel"}
    a = {p["index"]: p["score"] for p in want.json()["predictions"]}
    b = {p["index"]: p["score"] for p in got.json()["predictions"]}
    assert a.keys() == b.keys()
    for i in a:
        assert abs(a[i] - b[i]) < 1e-5


@pytest.mark.server
@pytest.mark.slow
def test_a_version_exported_by_one_user_serves_from_a_server_running_as_another(
    tiny_run: Path, bento_venv: Path
) -> None:
    """A training Job and a Deployment (or a host folder and a container) with different uids:
    exported by root under a strict umask, served by uid 65534 straight from the folder (with
    the Bento's environment and a copy of this checkout's service code, which that user can
    read)."""
    if not _as_nobody():
        pytest.skip("runs the server as another uid with setpriv, which needs root")
    from training.export import export_run

    root = Path(tempfile.mkdtemp(prefix="handserve-uid-"))
    try:
        root.chmod(0o755)
        models = root / "models"
        previous = os.umask(0o077)
        try:
            export_run(tiny_run, models, "tiny", verify=False, formats=("tflite_fp32",))
        finally:
            os.umask(previous)
        scratch = root / "scratch"
        scratch.mkdir()
        os.chown(scratch, NOBODY, NOBODY)
        # The service's code where that user can read it: the checkout may sit in a folder only
        # its owner may enter (a mktemp -d clone is 0700).
        src = root / "src"
        for package in ("handserve", "service"):
            shutil.copytree(
                REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__")
            )
        subprocess.run(["chmod", "-R", "a+rX", str(src)], check=True)
        env = _image_env(
            bento_venv,
            scratch,
            PYTHONPATH=str(src),
            HANDSERVE_MODELS_DIR=str(models),
            HANDSERVE_RUNTIME="litert",
        )
        target = "service.service:HandServe"
        with _serve_as_nobody(bento_venv, target, src, env, scratch) as url:
            r = requests.post(url + "/predict", files={"image": digit_png(4)}, timeout=30)
            assert r.status_code == 200, r.text
            assert (r.json()["model"], r.json()["version"]) == ("tiny", 1)
    finally:
        shutil.rmtree(root, ignore_errors=True)
