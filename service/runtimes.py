"""Runtimes: one interface over LiteRT (``.tflite``) and TensorFlow SavedModel.

Both take a batch of ``uint8`` images ``(N, H, W, C)`` exactly as :func:`handserve.images.
decode_image` makes them and return ``float32`` scores ``(N, num_classes)``. LiteRT is the
default on CPU (several times faster there and no TensorFlow import); SavedModel is chosen when
a GPU is visible, because TensorFlow runs there and LiteRT does not. TensorFlow is imported only
when the SavedModel runtime is built.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from handserve.artifacts import ArtifactError, FormatEntry, Manifest

log = logging.getLogger(__name__)


class Runtime(Protocol):
    """What the service needs from a model runner."""

    name: str  # "litert" or "savedmodel": a metric label
    file: str  # the file or folder it runs, relative to the version folder

    def predict(self, images: np.ndarray) -> np.ndarray:
        """``uint8`` ``(N, H, W, C)`` -> ``float32`` ``(N, num_classes)``; thread safe."""
        ...


def gpu_visible() -> bool:
    """Whether TensorFlow would see a GPU, checked without importing TensorFlow when possible.

    Importing TensorFlow costs seconds and hundreds of MB, so a LiteRT-only CPU server skips it:
    no NVIDIA device node or an empty ``CUDA_VISIBLE_DEVICES`` means no GPU.
    """
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    if not Path("/dev/nvidiactl").exists():
        return False
    try:
        import tensorflow as tf
    except ImportError:
        return False
    return bool(tf.config.list_physical_devices("GPU"))


def _buckets(max_batch: int) -> list[int]:
    """Batch sizes interpreters are built for: powers of two up to ``max_batch`` (and it)."""
    sizes, n = [], 1
    while n < max_batch:
        sizes.append(n)
        n *= 2
    sizes.append(max_batch)
    return sizes


class LiteRTRuntime:
    """LiteRT interpreter(s) with XNNPACK, one per padded batch size, each behind a lock.

    An ``Interpreter`` is not thread safe and resizing its input re-plans memory, so instead of
    resizing on every batch there is one interpreter per power-of-two batch size; a batch is
    padded up to the next size. Quantized (int8/uint8) inputs are quantized with the tensor's
    scale and zero point (the manifest's FormatEntry says the same), outputs dequantized.
    """

    name = "litert"

    def __init__(
        self, path: Path, *, fmt: FormatEntry | None, num_threads: int, max_batch: int
    ) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        self.file = self.path.name
        self._fmt = fmt
        self._num_threads = num_threads
        self._interpreter_cls = Interpreter
        self._sizes = _buckets(max_batch)
        self._interpreters: dict[int, Any] = {}
        self._locks: dict[int, threading.Lock] = {n: threading.Lock() for n in self._sizes}
        self._create_lock = threading.Lock()
        probe = self._get(1)
        inp = probe.get_input_details()[0]
        out = probe.get_output_details()[0]
        self.input_shape = tuple(int(d) for d in inp["shape"][1:])
        self.input_dtype = np.dtype(inp["dtype"])
        self.output_dtype = np.dtype(out["dtype"])
        self._in_q = tuple(inp.get("quantization", (0.0, 0)))
        self._out_q = tuple(out.get("quantization", (0.0, 0)))
        if fmt is not None and fmt.input_scale is not None:
            self._in_q = (float(fmt.input_scale), int(fmt.input_zero_point or 0))
        if fmt is not None and fmt.output_scale is not None:
            self._out_q = (float(fmt.output_scale), int(fmt.output_zero_point or 0))

    def _get(self, size: int) -> Any:
        with self._create_lock:
            interp = self._interpreters.get(size)
            if interp is None:
                interp = self._interpreter_cls(
                    model_path=str(self.path), num_threads=self._num_threads
                )
                idx = interp.get_input_details()[0]["index"]
                shape = list(interp.get_input_details()[0]["shape"])
                if shape[0] != size:
                    interp.resize_tensor_input(idx, [size, *shape[1:]])
                interp.allocate_tensors()
                self._interpreters[size] = interp
            return interp

    def _quantize(self, x: np.ndarray) -> np.ndarray:
        if self.input_dtype in (np.float32, np.float16):
            return x.astype(self.input_dtype)
        scale, zero = self._in_q
        if not scale:
            return x.astype(self.input_dtype)
        info = np.iinfo(self.input_dtype)
        q = np.round(x.astype(np.float32) / scale + zero)
        return np.clip(q, info.min, info.max).astype(self.input_dtype)

    def _dequantize(self, y: np.ndarray) -> np.ndarray:
        if self.output_dtype in (np.float32, np.float16):
            return y.astype(np.float32)
        scale, zero = self._out_q
        return ((y.astype(np.float32) - zero) * (scale or 1.0)).astype(np.float32)

    def predict(self, images: np.ndarray) -> np.ndarray:
        n = int(images.shape[0])
        outputs = []
        start = 0
        while start < n:  # batches over the largest size are split (BentoML caps them anyway)
            chunk = images[start : start + self._sizes[-1]]
            size = next(s for s in self._sizes if s >= len(chunk))
            x = self._quantize(chunk)
            if len(chunk) < size:
                pad = np.zeros((size - len(chunk), *x.shape[1:]), dtype=x.dtype)
                x = np.concatenate([x, pad])
            interp = self._get(size)
            with self._locks[size]:
                interp.set_tensor(interp.get_input_details()[0]["index"], x)
                interp.invoke()
                y = interp.get_tensor(interp.get_output_details()[0]["index"]).copy()
            outputs.append(self._dequantize(y[: len(chunk)]))
            start += len(chunk)
        return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)


class SavedModelRuntime:
    """TensorFlow SavedModel through its ``serving_default`` signature (on GPU when visible)."""

    name = "savedmodel"
    file = "saved_model"

    def __init__(self, path: Path) -> None:
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
        ((self._input_name, spec),) = kwargs.items()
        self.input_shape = tuple(int(d) for d in spec.shape[1:])
        self.input_dtype = np.dtype(spec.dtype.as_numpy_dtype)
        outputs = self._fn.structured_outputs
        if len(outputs) != 1:
            raise ArtifactError(self.path, f"serving_default has {len(outputs)} outputs, not 1")
        self._output_name = next(iter(outputs))

    def predict(self, images: np.ndarray) -> np.ndarray:
        x = self._tf.constant(images.astype(self.input_dtype))
        out = self._fn(**{self._input_name: x})[self._output_name]
        return np.asarray(out.numpy(), dtype=np.float32)


def choose_runtime_name(requested: str) -> str:
    """``auto`` resolves to SavedModel on a visible GPU, else LiteRT."""
    if requested != "auto":
        return requested
    return "savedmodel" if gpu_visible() else "litert"


def build_runtime(
    version_dir: Path,
    manifest: Manifest,
    *,
    runtime: str,
    litert_file: str = "model.tflite",
    num_threads: int = 2,
    max_batch: int = 64,
) -> Runtime:
    """Build ``runtime`` for a verified version and check its input shape against the manifest.

    Raises:
        ArtifactError: the file is missing, not listed in the manifest, or takes another shape.
    """
    version_dir = Path(version_dir)
    built: LiteRTRuntime | SavedModelRuntime
    if runtime == "litert":
        path = version_dir / litert_file
        listed = {e.path for e in manifest.files}
        if litert_file not in listed:
            raise ArtifactError(path, "this LiteRT file has no checksum in the manifest")
        fmt = next((f for f in manifest.formats.values() if f.path == litert_file), None)
        built = LiteRTRuntime(path, fmt=fmt, num_threads=num_threads, max_batch=max_batch)
    elif runtime == "savedmodel":
        built = SavedModelRuntime(version_dir / "saved_model")
    else:
        raise ValueError(f"unknown runtime {runtime!r}")
    if tuple(built.input_shape) != manifest.input.shape:
        raise ArtifactError(
            version_dir / built.file,
            f"input shape {tuple(built.input_shape)} differs from the manifest's "
            f"{manifest.input.shape}",
        )
    return built
