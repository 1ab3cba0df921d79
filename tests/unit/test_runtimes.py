"""handserve/runtimes.py without a server: CPU counting for the worker defaults (a container's
CPU quota, not its node's CPUs), and the LiteRT runtime on tiny real ``.tflite`` files made here
(its pool of interpreters, batch padding, int8 quantization, grey images on RGB files, the checks
against the manifest). The service tests run the same code through the app and a real server.
"""

from __future__ import annotations

import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from handserve import artifacts, runtimes
from handserve.artifacts import ArtifactError, Manifest


def test_cgroup_v2_quota_is_read(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert runtimes._cgroup_cpu_quota(tmp_path) == pytest.approx(1.5)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert runtimes._cgroup_cpu_quota(tmp_path) is None


def test_cgroup_v1_quota_is_read(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert runtimes._cgroup_cpu_quota(tmp_path) == pytest.approx(2.0)
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert runtimes._cgroup_cpu_quota(tmp_path) is None


def test_available_cpus_is_capped_by_the_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtimes.os, "sched_getaffinity", lambda pid: set(range(64)))
    monkeypatch.setattr(runtimes, "_cgroup_cpu_quota", lambda: 1.5)
    assert runtimes.available_cpus() == 2  # a partial CPU still gets a worker
    monkeypatch.setattr(runtimes, "_cgroup_cpu_quota", lambda: None)
    assert runtimes.available_cpus() == 64


# ------------------------------------------------------------------------ LiteRT, no server
# A tiny model whose answer numpy can compute: softmax(flatten(x) @ W + b) on 4x4 images, made
# into real .tflite files once per module (float32, the export's int8 with uint8 input and float
# output, and int8 in and out) so the runtime's pool, batching and quantization run as served.

SIZE, CLASSES = 4, 3


def _weights(channels: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(channels)
    w = rng.normal(0, 0.01, (SIZE * SIZE * channels, CLASSES)).astype(np.float32)
    return w, rng.normal(0, 0.5, CLASSES).astype(np.float32)


def reference(x: np.ndarray, channels: int = 1) -> np.ndarray:
    """What the float model computes, in numpy."""
    w, b = _weights(channels)
    logits = x.reshape(len(x), -1).astype(np.float64) @ w + b
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def images(n: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, channels), dtype=np.uint8)


def _convert(path: Path, channels: int, quantized: Any = None, gain: float = 1.0) -> Path:
    """Write the tiny model as ``path``; ``quantized`` is (input type, output type) for int8,
    calibrated on pixels times ``gain`` (2: a uint8 input's scale is 2, not 1)."""
    import tensorflow as tf

    w, b = _weights(channels)

    @tf.function(input_signature=[tf.TensorSpec([None, SIZE, SIZE, channels], tf.float32)])
    def classify(x: Any) -> Any:
        return tf.nn.softmax(tf.matmul(tf.reshape(x, [-1, SIZE * SIZE * channels]), w) + b)

    module = tf.Module()
    module.classify = classify
    conv = tf.lite.TFLiteConverter.from_concrete_functions(
        [classify.get_concrete_function()], module
    )
    if quantized is not None:
        calibration = images(64, channels, seed=1).astype(np.float32) * gain
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([x[None]] for x in calibration)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type, conv.inference_output_type = quantized
    path.write_bytes(conv.convert())
    return path


@pytest.fixture(scope="module")
def tflite(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import tensorflow as tf

    folder = tmp_path_factory.mktemp("tiny-tflite")
    return {
        "fp32": _convert(folder / "fp32.tflite", 1),
        "rgb": _convert(folder / "rgb.tflite", 3),
        "uint8_in": _convert(folder / "uint8_in.tflite", 1, (tf.uint8, tf.float32), gain=2),
        "int8_io": _convert(folder / "int8_io.tflite", 1, (tf.int8, tf.int8)),
    }


def test_float_file_gives_the_models_answer_at_every_batch_size(tflite: dict[str, Path]) -> None:
    runtime = runtimes.LiteRTRuntime(tflite["fp32"])
    assert runtime.input_shape == (SIZE, SIZE, 1)
    assert runtime.num_classes == CLASSES
    for n in (1, 3, 5, 64, runtimes.MAX_CALL_BATCH * 2 + 3):  # padded, exact, split in calls
        x = images(n, seed=n)
        out = runtime.predict(x)
        assert out.dtype == np.float32 and out.shape == (n, CLASSES)
        np.testing.assert_allclose(out, reference(x), atol=1e-5)
    np.testing.assert_allclose(runtime.predict(x.astype(np.float32)), reference(x), atol=1e-5)
    assert runtime.predict(images(0)).shape == (0, CLASSES)


def test_batch_sizes_are_padded_to_few_interpreters(tflite: dict[str, Path]) -> None:
    sizes = {n: runtimes._padded_size(n) for n in (1, 2, 3, 5, 64, 65, 1000)}
    assert sizes == {1: 1, 2: 2, 3: 4, 5: 8, 64: 64, 65: 64, 1000: 64}  # capped at one call
    runtime = runtimes.LiteRTRuntime(tflite["fp32"])
    for n in (3, 4, 2, 3):
        runtime.predict(images(n))
    slot = runtime._pool.get()
    assert sorted(slot._by_size) == [1, 2, 4]  # built once per size (1: the probe), then kept


def test_calls_one_after_another_reuse_the_interpreter_just_used(
    tflite: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool hands out the most recently used interpreter: on a worker's event loop every
    call runs on one interpreter whose memory is in the CPU's caches (alternating two cost
    MobileNetV2 up to 8% more CPU per request under load); the others serve calls that
    overlap (threads)."""
    used: list[int] = []
    run = runtimes._Interpreters.run

    def recorded(self: Any, x: np.ndarray) -> np.ndarray:
        used.append(id(self))
        return run(self, x)

    monkeypatch.setattr(runtimes._Interpreters, "run", recorded)
    runtime = runtimes.LiteRTRuntime(tflite["fp32"], instances=3)
    for _ in range(5):
        runtime.predict(images(1))
    assert len(set(used)) == 1
    held = runtime._pool.get()  # another call is running on that one: the next takes another
    runtime.predict(images(1))
    runtime._pool.put(held)
    assert len(set(used)) == 2


def test_a_wide_call_answers_as_the_pool_and_never_waits_for_itself(
    tflite: dict[str, Path],
) -> None:
    """``predict_wide`` runs on one interpreter with several threads, built once; a second
    call while it runs (another thread) takes the pool instead of waiting."""
    runtime = runtimes.LiteRTRuntime(tflite["fp32"])
    x = images(1)
    np.testing.assert_allclose(runtime.predict_wide(x, 2), runtime.predict(x), atol=1e-5)
    built = runtime._wide
    assert built is not None and runtime.predict_wide(x, 2) is not None and runtime._wide is built
    with runtime._wide_lock:  # held by a call in another thread
        np.testing.assert_allclose(runtime.predict_wide(x, 2), runtime.predict(x), atol=1e-5)
    one_core = runtimes.LiteRTRuntime(tflite["fp32"])
    one_core.predict_wide(x, 1)  # one thread: the pool, no second interpreter
    assert one_core._wide is None


def test_int8_input_is_quantized_with_the_files_scale_and_zero_point(
    tflite: dict[str, Path],
) -> None:
    runtime = runtimes.LiteRTRuntime(tflite["uint8_in"])
    assert runtime.input_dtype == np.uint8 and runtime.output_dtype == np.float32
    scale, zero = runtime.input_quant
    assert scale == pytest.approx(2, rel=0.02)  # calibrated on 0..510: one step, two pixels
    x = images(32, seed=2)
    q = runtime.quantize(x)
    assert q.dtype == np.uint8
    # each quantized pixel stands for the raw one within half a step
    np.testing.assert_array_less(
        np.abs((q.astype(np.float32) - zero) * scale - x), scale / 2 + 1e-3
    )
    # quantized, not equal: close to the float model (pixels fed unscaled would be far off)
    np.testing.assert_allclose(runtime.predict(x), reference(x), atol=0.05)


def test_int8_output_is_dequantized_and_out_of_range_input_clipped(
    tflite: dict[str, Path],
) -> None:
    runtime = runtimes.LiteRTRuntime(tflite["int8_io"])
    assert runtime.input_dtype == np.int8 and runtime.output_dtype == np.int8
    x = images(32, seed=3)
    out = runtime.predict(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, reference(x), atol=0.05)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=0.05)  # probabilities, not int8 codes
    scale, zero = runtime.output_quant
    raw = np.array([[zero, zero + 10, 127]], np.int8)
    np.testing.assert_allclose(runtime.dequantize(raw), [[0.0, 10 * scale, (127 - zero) * scale]])
    far = np.full((1, SIZE, SIZE, 1), -1e4, np.float32)
    assert set(runtime.quantize(far).ravel()) == {-128}  # clipped, not wrapped around
    assert set(runtime.quantize(-far).ravel()) == {127}


def test_grey_images_run_on_an_rgb_file_as_three_equal_channels(tflite: dict[str, Path]) -> None:
    runtime = runtimes.LiteRTRuntime(tflite["rgb"])
    assert runtime.input_shape == (SIZE, SIZE, 3)
    grey = images(4, seed=4)
    np.testing.assert_array_equal(runtime.predict(grey), runtime.predict(np.repeat(grey, 3, -1)))
    np.testing.assert_allclose(
        runtime.predict(grey), reference(np.repeat(grey, 3, -1), 3), atol=1e-5
    )


def test_wrong_shapes_are_refused_and_the_interpreter_goes_back(tflite: dict[str, Path]) -> None:
    runtime = runtimes.LiteRTRuntime(tflite["fp32"], instances=2)
    for bad in (np.zeros((1, SIZE + 1, SIZE, 1), np.uint8), np.zeros((2, SIZE, SIZE, 2), np.uint8)):
        with pytest.raises(ValueError):
            runtime.predict(bad)
    assert runtime._pool.qsize() == 2  # a failed call does not lose its interpreter
    np.testing.assert_allclose(runtime.predict(images(2)), reference(images(2)), atol=1e-5)


def test_instances_interpreters_run_at_once(
    tflite: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``instances`` callers in flight, all of them are inside an interpreter together:
    each waits at a barrier inside ``run`` that breaks unless all arrive."""
    instances = 3
    runtime = runtimes.LiteRTRuntime(tflite["fp32"], instances=instances)
    barrier = threading.Barrier(instances, timeout=60)
    real_run = runtimes._Interpreters.run

    def run(slot: Any, x: np.ndarray) -> np.ndarray:
        barrier.wait()
        return real_run(slot, x)

    monkeypatch.setattr(runtimes._Interpreters, "run", run)
    with ThreadPoolExecutor(instances) as pool:
        outs = list(pool.map(lambda i: runtime.predict(images(1, seed=i)), range(instances)))
    for i, out in enumerate(outs):
        np.testing.assert_allclose(out, reference(images(1, seed=i)), atol=1e-5)


def test_the_pool_never_hands_one_interpreter_to_two_callers(
    tflite: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many threads on a pool of 2: at most 2 calls run at once, never two in one slot, and each
    caller gets the answer to its own images."""
    runtime = runtimes.LiteRTRuntime(tflite["fp32"], instances=2)
    lock = threading.Lock()
    busy: set[int] = set()
    seen: set[int] = set()
    overlaps: list[int] = []
    most = 0
    real_run = runtimes._Interpreters.run

    def run(slot: Any, x: np.ndarray) -> np.ndarray:
        nonlocal most
        with lock:
            if id(slot) in busy:
                overlaps.append(id(slot))
            busy.add(id(slot))
            seen.add(id(slot))
            most = max(most, len(busy))
        try:
            time.sleep(0.002)  # widen the window in which a second caller could slip in
            return real_run(slot, x)
        finally:
            with lock:
                busy.discard(id(slot))

    monkeypatch.setattr(runtimes._Interpreters, "run", run)
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda i: (i, runtime.predict(images(1 + i % 5, seed=i))), range(64)))
    assert overlaps == []
    assert most <= 2 and len(seen) <= 2
    for i, out in outs:
        np.testing.assert_allclose(out, reference(images(1 + i % 5, seed=i)), atol=1e-5)


def test_open_runtime_checks_the_file_against_the_manifest(
    tflite: dict[str, Path], tmp_path: Path
) -> None:
    served = artifacts.served_format("litert")
    shutil.copy(tflite["fp32"], tmp_path / served.path)

    def manifest(shape: tuple[int, int, int], files: list[artifacts.FileEntry]) -> Manifest:
        return Manifest(
            name="tiny",
            version=1,
            labels=[str(i) for i in range(CLASSES)],
            input=artifacts.InputContract(*shape),
            formats={served.key: artifacts.FormatEntry(served.path, "tflite", "float32")},
            files=files,
        )

    files = artifacts.file_entries(tmp_path)
    built = runtimes.open_runtime(tmp_path, manifest((SIZE, SIZE, 1), files), runtime="litert")
    assert built.input_shape == (SIZE, SIZE, 1)
    with pytest.raises(ArtifactError, match="differs from the manifest"):
        runtimes.open_runtime(tmp_path, manifest((SIZE + 1, SIZE, 1), files), runtime="litert")
    with pytest.raises(ArtifactError, match="no checksum in the manifest"):
        runtimes.open_runtime(tmp_path, manifest((SIZE, SIZE, 1), []), runtime="litert")
    other = tmp_path / "other.tflite"  # a file swapped in after its checksum was taken
    shutil.copy(tflite["rgb"], other)
    changed = [artifacts.FileEntry(served.path, 1, artifacts.sha256_file(other))]
    with pytest.raises(ArtifactError, match="changed after its checksum was verified"):
        runtimes.open_runtime(tmp_path, manifest((SIZE, SIZE, 1), changed), runtime="litert")


def test_interpreters_of_every_batch_size_are_built_without_the_file(
    tflite: dict[str, Path], tmp_path: Path
) -> None:
    """The file is read once: a batch size first seen after the version folder was deleted
    (an operator's ``rm -rf``) still runs, from the bytes in memory."""
    path = tmp_path / "model.tflite"
    shutil.copy(tflite["fp32"], path)
    runtime = runtimes.LiteRTRuntime(path, instances=2)
    path.unlink()
    tmp_path.rmdir()
    for n in (3, 5, 33, runtimes.MAX_CALL_BATCH + 1):  # sizes 4, 8, 64: none built yet
        x = images(n, seed=n)
        np.testing.assert_allclose(runtime.predict(x), reference(x), atol=1e-5)
    with pytest.raises(ArtifactError, match="cannot read the model file"):
        runtimes.LiteRTRuntime(path)
