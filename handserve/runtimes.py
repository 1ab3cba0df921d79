"""Runtimes: the one place an exported model file is run, for the server, verify and examples.

Both runtimes take a batch of raw pixels ``(N, H, W, C)`` (``uint8`` as
:func:`handserve.images.decode_image` makes them, or float 0..255) and return ``float32``
probabilities ``(N, num_classes)``. The service serves with them, ``handserve verify`` and the
export's parity check compare them with Keras, and ``examples/litert_predict.py`` runs them, so
parity tests test the code that serves.

* :class:`LiteRTRuntime` keeps a small pool of interpreters. An interpreter is not thread safe,
  and on a CPU LiteRT gains little from batching (one thread per interpreter: MobileNetV2 at
  160 px 1.1-1.2x images per CPU-second at batch 2-8, nothing at 32; docs/benchmarks/peers.md),
  so the way to use several cores is several interpreters working on different requests at
  once, each with few threads; the service joins small batches only where they pay.
* :class:`SavedModelRuntime` runs the ``serving_default`` signature, which TensorFlow may call
  from several threads; it gains a lot from batches (the service batches for it).

TensorFlow is imported only when a SavedModel runtime is built, so a LiteRT-only server or phone
example never pays for it.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from handserve import artifacts
from handserve.artifacts import ArtifactError, FormatEntry, Manifest

#: Largest batch handed to a runtime in one call; longer inputs are split (memory stays bounded).
MAX_CALL_BATCH = 64


class Runtime(Protocol):
    """What callers need from a model runner."""

    name: str  # a key of handserve.artifacts.DEFAULT_FORMAT: also a metric label
    file: str  # the file or folder it runs, relative to the version folder
    input_shape: tuple[int, ...]  # (H, W, C)
    instances: int  # model calls that may run at once (callers split long inputs over them)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Raw pixels ``(N, H, W, C)`` -> ``float32`` ``(N, num_classes)``; thread safe."""
        ...


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota.

    A container limited to 2 CPUs still sees every CPU of its node in the affinity mask; the
    quota (``cpu.max`` in cgroup v2, ``cpu.cfs_quota_us`` in v1) is what it may really use.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, max(1, int(-(-quota // 1))))
    return max(1, cpus)


def _cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The cgroup's CPU limit in CPUs, or None when there is none (or no cgroup to read)."""
    try:
        text = (root / "cpu.max").read_text().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


def gpu_visible(*, import_tensorflow: bool = True) -> bool:
    """Whether TensorFlow would see a GPU, checked without importing TensorFlow when possible.

    Importing TensorFlow costs seconds and hundreds of MB, so a LiteRT-only CPU server skips it:
    no NVIDIA device node or an empty ``CUDA_VISIBLE_DEVICES`` means no GPU. Without
    ``import_tensorflow`` a device node is taken to mean a GPU.
    """
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    if not Path("/dev/nvidiactl").exists():
        return False
    if not import_tensorflow:
        return True
    try:
        import tensorflow as tf
    except ImportError:
        return False
    return bool(tf.config.list_physical_devices("GPU"))


def choose_runtime_name(requested: str, *, import_tensorflow: bool = True) -> str:
    """``auto`` resolves to SavedModel on a visible GPU, else LiteRT."""
    if requested != "auto":
        return requested
    gpu = gpu_visible(import_tensorflow=import_tensorflow)
    return (SavedModelRuntime if gpu else LiteRTRuntime).name


def _padded_size(n: int) -> int:
    """Batch sizes interpreters are built for: the next power of two, so few sizes exist."""
    size = 1
    while size < n:
        size *= 2
    return min(size, MAX_CALL_BATCH)


class _Interpreters:
    """One pool slot: interpreters of one model by batch size, used by one thread at a time.

    Resizing an interpreter's input re-plans its memory (milliseconds), so each batch size gets
    its own interpreter, built on first use and kept. Every one is built from the model's bytes
    in memory, never from its file: a batch size first seen an hour after loading must not
    depend on the version folder still being there (an operator may have deleted it).
    """

    def __init__(self, content: bytes, num_threads: int | None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        # The interpreter keeps a reference to ``content`` (the flatbuffer is not copied).
        self._make = lambda: Interpreter(model_content=content, num_threads=num_threads)
        self._by_size: dict[int, tuple[Any, int, int]] = {}
        probe = self._get(1)[0]
        self.details = probe.get_input_details()[0], probe.get_output_details()[0]

    def _get(self, size: int) -> tuple[Any, int, int]:
        entry = self._by_size.get(size)
        if entry is None:
            interp = self._make()
            inp = interp.get_input_details()[0]
            if int(inp["shape"][0]) != size:
                interp.resize_tensor_input(inp["index"], [size, *inp["shape"][1:]])
            interp.allocate_tensors()
            out_index = interp.get_output_details()[0]["index"]
            entry = self._by_size[size] = (interp, int(inp["index"]), int(out_index))
        return entry

    def run(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        size = _padded_size(n)
        if n < size:
            x = np.concatenate([x, np.zeros((size - n, *x.shape[1:]), x.dtype)])
        interp, in_index, out_index = self._get(size)
        interp.set_tensor(in_index, x)
        interp.invoke()
        out = interp.get_tensor(out_index)  # a copy of the output buffer
        return out if n == size else out[:n]


class LiteRTRuntime:
    """A ``.tflite`` file on a pool of LiteRT interpreters (XNNPACK), quantizing as the file says.

    Args:
        path: the ``.tflite`` file.
        num_threads: threads per interpreter (None: LiteRT's default).
        instances: interpreters that may run at once; ``predict`` from more threads than this
            waits for a free one.

    Integer (int8/uint8) inputs are quantized with the scale and zero point stored in the file
    itself and integer outputs dequantized, so callers always pass raw pixels and get floats.

    The file is read once, here; ``content`` holds its bytes (what :func:`open_runtime` checks
    against the manifest's checksum) and every interpreter is built from them.
    """

    name = artifacts.TFLITE_FP32.runtime

    def __init__(self, path: Path, *, num_threads: int | None = 1, instances: int = 1) -> None:
        self.path = Path(path)
        self.file = self.path.name
        self.instances = max(1, int(instances))
        try:
            self.content = self.path.read_bytes()
        except OSError as exc:
            raise ArtifactError(self.path, f"cannot read the model file: {exc.strerror}") from exc
        # Most recently used first: calls one after another (a worker's event loop) run on one
        # interpreter whose memory stays in the CPU's caches; a FIFO alternated them, and cost
        # MobileNetV2 up to 8% more CPU per request at 8 clients (docs/benchmarks/peers.md).
        self._pool: queue.LifoQueue[_Interpreters] = queue.LifoQueue()
        first = _Interpreters(self.content, num_threads)
        self._pool.put(first)
        for _ in range(self.instances - 1):
            self._pool.put(_Interpreters(self.content, num_threads))
        #: One interpreter with a thread per core, for single images while the machine's other
        #: cores idle (:meth:`predict_wide`); built on first use.
        self._wide: _Interpreters | None = None
        self._wide_lock = threading.Lock()
        inp, out = first.details
        self.input_shape = tuple(int(d) for d in inp["shape"][1:])
        self.input_dtype = np.dtype(inp["dtype"])
        self.output_dtype = np.dtype(out["dtype"])
        self.num_classes = int(out["shape"][-1])
        self.input_quant = _quant(inp)
        self.output_quant = _quant(out)

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Raw pixels to the input tensor's type: a cast for float inputs, else quantized.

        Grey images ``(N, H, W, 1)`` for a file that takes RGB (the mobile files of a grayscale
        model, which compute the luma in their graph) get the grey channel three times: the
        luma of (v, v, v) is v, so they give exactly the answer of the grey image."""
        if x.shape[-1] == 1 and self.input_shape[-1] == 3:
            x = np.repeat(x, 3, axis=-1)
        if self.input_dtype.kind == "f":
            return x.astype(self.input_dtype, copy=False)
        scale, zero = self.input_quant
        if not scale:
            return x.astype(self.input_dtype)
        info = np.iinfo(self.input_dtype)
        q = np.round(x.astype(np.float32) / scale + zero)
        return np.clip(q, info.min, info.max).astype(self.input_dtype)

    def dequantize(self, y: np.ndarray) -> np.ndarray:
        """The output tensor as float32 probabilities."""
        if self.output_dtype.kind == "f":
            return y.astype(np.float32, copy=False)
        scale, zero = self.output_quant
        return ((y.astype(np.float32) - zero) * (scale or 1.0)).astype(np.float32)

    def predict_wide(self, images: np.ndarray, threads: int) -> np.ndarray:
        """:meth:`predict` on an interpreter with ``threads`` threads: a single image's call
        in less time, for more CPU (MobileNetV2 at 160 px on 2 cores: 1.23 ms -> 0.93 ms of
        wall time, 1.77 ms of CPU). For a worker whose peers idle; while another call holds
        it, the call runs on the pool as :meth:`predict` would."""
        if threads <= 1 or not self._wide_lock.acquire(blocking=False):
            return self.predict(images)
        try:
            if self._wide is None:
                self._wide = _Interpreters(self.content, threads)
            return self.dequantize(self._wide.run(self.quantize(images)))
        finally:
            self._wide_lock.release()

    def predict(self, images: np.ndarray) -> np.ndarray:
        slot = self._pool.get()  # blocks while every interpreter is busy
        try:
            if 0 < len(images) <= MAX_CALL_BATCH:  # the usual case, without the list
                return self.dequantize(slot.run(self.quantize(images)))
            outs = [
                self.dequantize(slot.run(self.quantize(images[i : i + MAX_CALL_BATCH])))
                for i in range(0, len(images), MAX_CALL_BATCH)
            ]
        finally:
            self._pool.put(slot)
        if not outs:
            return np.zeros((0, self.num_classes), np.float32)
        return outs[0] if len(outs) == 1 else np.concatenate(outs)


def _quant(detail: dict[str, Any]) -> tuple[float, int]:
    scale, zero = detail.get("quantization", (0.0, 0))
    return float(scale), int(zero)


class SavedModelRuntime:
    """A TensorFlow SavedModel through ``serving_default``, as TensorFlow Serving would call it."""

    name = artifacts.SAVED_MODEL.runtime
    file = artifacts.SAVED_MODEL.path
    instances = 1  # one call uses every core (or the GPU); callers batch instead

    def __init__(self, path: Path, *, num_threads: int | None = None, instances: int = 1) -> None:
        """``num_threads`` and ``instances`` are LiteRT's; TensorFlow sizes its own pools."""
        import tensorflow as tf

        self._tf = tf
        self.path = Path(path)
        loaded = tf.saved_model.load(str(self.path))
        if "serving_default" not in loaded.signatures:
            raise ArtifactError(self.path, "SavedModel has no serving_default signature")
        self._loaded = loaded  # keep the object alive: the signature references its variables
        self._fn = loaded.signatures["serving_default"]
        _, kwargs = self._fn.structured_input_signature
        if len(kwargs) != 1:
            raise ArtifactError(self.path, f"serving_default takes {len(kwargs)} inputs, not 1")
        ((self._input_name, tensor),) = kwargs.items()
        self.input_shape = tuple(int(d) for d in tensor.shape[1:])
        self.input_dtype = np.dtype(tensor.dtype.as_numpy_dtype)
        outputs = self._fn.structured_outputs
        if len(outputs) != 1:
            raise ArtifactError(self.path, f"serving_default has {len(outputs)} outputs, not 1")
        self._output_name = next(iter(outputs))

    def predict(self, images: np.ndarray) -> np.ndarray:
        outs = []
        for i in range(0, len(images), MAX_CALL_BATCH):
            x = self._tf.constant(images[i : i + MAX_CALL_BATCH].astype(self.input_dtype))
            outs.append(np.asarray(self._fn(**{self._input_name: x})[self._output_name].numpy()))
        if not outs:
            return np.zeros((0, 0), np.float32)
        return np.concatenate(outs).astype(np.float32, copy=False)


#: The class of each runtime of :data:`handserve.artifacts.DEFAULT_FORMAT`, by name.
RUNTIMES: dict[str, type[LiteRTRuntime] | type[SavedModelRuntime]] = {
    cls.name: cls for cls in (LiteRTRuntime, SavedModelRuntime)
}


def open_format(
    version_dir: Path, entry: FormatEntry, *, num_threads: int | None = None, instances: int = 1
) -> LiteRTRuntime | SavedModelRuntime:
    """The runtime for one format of a manifest (what verify and the export's parity use)."""
    path = Path(version_dir) / entry.path
    fmt = next((f for f in artifacts.FORMATS.values() if f.kind == entry.kind), None)
    if fmt is None:
        raise ArtifactError(path, f"unknown format kind {entry.kind!r}")
    return RUNTIMES[fmt.runtime](path, num_threads=num_threads, instances=instances)


def open_runtime(
    version_dir: Path,
    manifest: Manifest,
    *,
    runtime: str,
    litert_file: str | None = None,
    num_threads: int | None = 1,
    instances: int = 1,
) -> LiteRTRuntime | SavedModelRuntime:
    """The runtime a server uses for a verified version, its input checked against the manifest.

    Raises:
        ArtifactError: the file is missing, not listed in the manifest, or takes another shape.
        ValueError: ``runtime`` is not one of :data:`RUNTIMES`.
    """
    version_dir = Path(version_dir)
    served = artifacts.served_format(runtime, litert_file)
    if served.kind == "tflite" and served.path not in {e.path for e in manifest.files}:
        raise ArtifactError(
            version_dir / served.path, "this LiteRT file has no checksum in the manifest"
        )
    built = RUNTIMES[runtime](
        version_dir / served.path, num_threads=num_threads, instances=instances
    )
    if isinstance(built, LiteRTRuntime):
        # The bytes the interpreters run are the bytes whose checksum was verified: a file
        # replaced between the check and this read is refused, not served unverified.
        want_sha = next(e.sha256 for e in manifest.files if e.path == served.path)
        if hashlib.sha256(built.content).hexdigest() != want_sha:
            raise ArtifactError(
                version_dir / served.path, "the file changed after its checksum was verified"
            )
    entry = next((f for f in manifest.formats.values() if f.path == served.path), None)
    want = manifest.input_shape_of(entry) if entry is not None else manifest.input.shape
    if tuple(built.input_shape) != want or not manifest.input.accepts(want):
        raise ArtifactError(
            version_dir / built.file,
            f"input shape {tuple(built.input_shape)} differs from the manifest's {want}",
        )
    return built
