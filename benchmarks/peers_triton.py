"""Triton's peer in ``benchmarks/peers.py``: PyTriton (Triton Inference Server 2.51) serving one
export, in PyTriton's side environment (``.cache/venv-pytriton``, ``requirements/pytriton.txt``).

    LD_LIBRARY_PATH=<the interpreter's libdir> PYTHONPATH=. \\
        .cache/venv-pytriton/bin/python benchmarks/peers_triton.py VERSION_DIR PORT [INSTANCES]

Written as PyTriton's docs write a CPU model: an inference callable under ``@batch``, bound with
``Triton.bind`` once per model instance (``infer_func=[...]``, 2 here: one per core, each with its
own interpreter), and Triton's dynamic batcher (``ModelConfig(max_batch_size=32)`` with the
default ``DynamicBatcher()``: no added queue delay, it batches what is waiting). The request is
the Open Inference Protocol (KServe V2) with Triton's binary tensor extension, as its clients
send images: one BYTES input ``image`` of shape ``[1, 1]`` holding the encoded file. Outputs:
``label`` (BYTES), ``index`` (INT32), ``score`` (FP32), JSON. HTTP binds 127.0.0.1; gRPC and
metrics listen on loopback too. The model is ``benchmarks/peer_model.py``'s: handserve's decode,
the same LiteRT file, one thread per interpreter, a batch of n images run as one call.

Triton's Python stub loads ``libpython`` dynamically: the interpreter's own must come first on
``LD_LIBRARY_PATH`` (``benchmarks/peers.py`` puts it there), or it finds Debian's and crashes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from benchmarks.peer_model import LiteRTClassifier

MAX_BATCH = 32


def infer_function(version_dir: Path):
    """One model instance: its own interpreter, a batch in, one row per image out."""
    model = LiteRTClassifier(version_dir, num_threads=1)

    @batch
    def infer(image: np.ndarray) -> dict[str, np.ndarray]:
        rows = model.classify([bytes(b) for b in image[:, 0]])
        return {
            "label": np.array([[r["label"].encode()] for r in rows], dtype=np.object_),
            "index": np.array([[r["index"]] for r in rows], dtype=np.int32),
            "score": np.array([[r["score"]] for r in rows], dtype=np.float32),
        }

    return infer


def main(argv: list[str]) -> None:
    version_dir, port = Path(argv[0]), int(argv[1])
    instances = int(argv[2]) if len(argv) > 2 else 2
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=port,
        grpc_address="127.0.0.1",
        grpc_port=port + 1,
        metrics_address="127.0.0.1",
        metrics_port=port + 2,
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name=version_dir.parent.name,
            infer_func=[infer_function(version_dir) for _ in range(instances)],
            inputs=[Tensor(name="image", dtype=np.bytes_, shape=(1,))],
            outputs=[
                Tensor(name="label", dtype=np.bytes_, shape=(1,)),
                Tensor(name="index", dtype=np.int32, shape=(1,)),
                Tensor(name="score", dtype=np.float32, shape=(1,)),
            ],
            config=ModelConfig(max_batch_size=MAX_BATCH, batcher=DynamicBatcher()),
            strict=True,
        )
        triton.serve()


if __name__ == "__main__":
    main(sys.argv[1:])
