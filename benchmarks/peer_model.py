"""The model every peer server of ``benchmarks/peers.py`` runs: one export's LiteRT file behind
``handserve.images.decode_image``, top-1 out.

KServe's and Triton's servers in that benchmark wrap this class, so that only the serving stack
differs from handserve's: the same decode, the same ``model.tflite`` (one thread per interpreter,
as handserve runs it), the same answer (label, index, score). It imports NumPy, Pillow, LiteRT
and ``handserve``'s TensorFlow-free modules only, so PyTriton's side environment (numpy < 2) can
load it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from handserve import artifacts
from handserve.images import decode_image


class LiteRTClassifier:
    """One LiteRT interpreter (``num_threads`` threads) over one version folder; not thread safe:
    a server gives each worker or model instance its own.

    A call with several images runs them as one batch (the interpreter's input is resized when
    the batch size changes), as Triton's dynamic batcher hands them over.
    """

    def __init__(self, version_dir: Path | str, num_threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.version_dir = Path(version_dir)
        manifest = artifacts.read_manifest(self.version_dir)
        self.labels = list(manifest.labels)
        self.spec = manifest.input.image_spec
        self.interpreter = Interpreter(
            model_path=str(self.version_dir / artifacts.TFLITE_FP32.path), num_threads=num_threads
        )
        self.interpreter.allocate_tensors()
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]["index"]
        self._batch = int(self._input["shape"][0])
        # A grayscale model's mobile file takes RGB (docs/artifacts.md): repeat the channel.
        self._repeat = int(self._input["shape"][-1]) // self.spec.channels

    def scores(self, images: np.ndarray) -> np.ndarray:
        """Class scores of a decoded float32 batch ``[n, h, w, c]``."""
        if self._repeat > 1:
            images = np.repeat(images, self._repeat, axis=-1)
        n = images.shape[0]
        if n != self._batch:
            self.interpreter.resize_tensor_input(self._input["index"], [n, *images.shape[1:]])
            self.interpreter.allocate_tensors()
            self._batch = n
        self.interpreter.set_tensor(self._input["index"], images)
        self.interpreter.invoke()
        return np.asarray(self.interpreter.get_tensor(self._output))

    def classify(self, blobs: list[bytes]) -> list[dict[str, Any]]:
        """Top-1 of each encoded image, as handserve's ``/predict`` reports it."""
        batch = np.stack([decode_image(blob, self.spec) for blob in blobs]).astype(np.float32)
        out = []
        for row in self.scores(batch):
            i = int(np.argmax(row))
            out.append({"label": self.labels[i], "index": i, "score": float(row[i])})
        return out
