"""A gRPC client program, run as a subprocess by tests/service/test_v2_grpc.py.

``python tests/service/v2_grpc_driver.py triton|kserve`` reads a JSON request on stdin (the
server's address, the model, images as raw pixels and as PNG files) and prints what the client
got, as JSON. Each client runs in a process of its own because both ship the protocol's
messages under the same protobuf names (``inference.ModelInferRequest``...): tritonclient's and
the kserve SDK's generated modules cannot be imported into one process, and the test session
imports the kserve SDK for its REST tests. This is also how their users call them: from a
program of their own.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from typing import Any

import numpy as np


def _png(spec: dict[str, Any]) -> np.ndarray:
    return np.array([base64.b64decode(p) for p in spec["pngs"]], dtype=np.object_)


def triton(spec: dict[str, Any]) -> dict[str, Any]:
    """``tritonclient.grpc`` as a Triton user calls it (raw_input_contents, as it always sends)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(spec["address"])
    model = spec["model"]
    pixels = np.asarray(spec["pixels"], np.uint8)
    out: dict[str, Any] = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": {m: client.is_model_ready(m) for m in spec["ready_models"]},
        "server": client.get_server_metadata(as_json=True),
        "metadata": client.get_model_metadata(model, as_json=True),
    }

    def infer(name: str, array: np.ndarray, datatype: str, **kw: Any) -> Any:
        tensor = grpcclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        return client.infer(model, [tensor], **kw)

    out["uint8"] = infer("image", pixels, "UINT8").as_numpy("probabilities").tolist()
    out["fp32"] = infer("image", pixels.astype(np.float32), "FP32").as_numpy("probabilities")
    out["fp32"] = out["fp32"].tolist()
    result = infer("image_bytes", _png(spec), "BYTES", request_id="req-7")
    out["bytes"] = result.as_numpy("probabilities").tolist()
    out["id"] = result.get_response().id
    top = grpcclient.InferRequestedOutput("probabilities", class_count=3)
    classes = infer("image", pixels, "UINT8", outputs=[top]).as_numpy("probabilities")
    out["classification"] = [[s.decode() for s in row] for row in classes]
    errors = {}
    cases = {
        "shape": ("image", np.zeros((1, 5, 5, 1), np.uint8), "UINT8"),
        "datatype": ("image", pixels.astype(np.int32), "INT32"),
        "too_many": ("image_bytes", np.array([b"x"] * 65, dtype=np.object_), "BYTES"),
        "not_an_image": ("image_bytes", np.array([b"not a png"], dtype=np.object_), "BYTES"),
    }
    for case, (name, array, datatype) in cases.items():
        try:
            infer(name, array, datatype)
            errors[case] = None
        except InferenceServerException as exc:
            errors[case] = [exc.status(), exc.message()]
    try:
        client.infer("no-such-model", [grpcclient.InferInput("image", [1], "UINT8")])
    except InferenceServerException as exc:
        errors["unknown_model"] = [exc.status(), exc.message()]
    out["errors"] = errors
    client.close()
    return out


def kserve(spec: dict[str, Any]) -> dict[str, Any]:
    """The kserve SDK's ``InferenceGRPCClient``: typed ``contents`` and raw bytes."""
    from kserve.inference_client import InferenceGRPCClient
    from kserve.protocol.infer_type import InferInput, InferRequest

    model = spec["model"]
    pixels = np.asarray(spec["pixels"], np.uint8)

    async def run() -> dict[str, Any]:
        client = InferenceGRPCClient(spec["address"])
        out: dict[str, Any] = {
            "live": await client.is_server_live(),
            "ready": await client.is_server_ready(),
            "model_ready": {m: await client.is_model_ready(m) for m in spec["ready_models"]},
        }

        async def infer(name: str, array: np.ndarray, datatype: str, binary: bool) -> Any:
            tensor = InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array, binary_data=binary)
            request = InferRequest(model_name=model, infer_inputs=[tensor], request_id="k-1")
            return await client.infer(request)

        for binary in (True, False):
            key = "raw" if binary else "typed"
            result = await infer("image", pixels, "UINT8", binary)
            out[f"uint8_{key}"] = result.outputs[0].as_numpy().tolist()
            out["id"] = result.id
            result = await infer("image", pixels.astype(np.float32), "FP32", binary)
            out[f"fp32_{key}"] = result.outputs[0].as_numpy().tolist()
        # BYTES go raw: the SDK sends typed BYTES only as UTF-8 text, which an image is not
        result = await infer("image_bytes", _png(spec), "BYTES", True)
        out["bytes_raw"] = result.outputs[0].as_numpy().tolist()
        try:
            await infer("image", np.zeros((1, 5, 5, 1), np.uint8), "UINT8", False)
            out["shape_error"] = None
        except Exception as exc:  # the SDK re-raises grpc's AioRpcError as it is
            out["shape_error"] = [str(exc.code().name), exc.details()]  # type: ignore[attr-defined]
        await client.close()
        return out

    return asyncio.run(run())


if __name__ == "__main__":
    request = json.load(sys.stdin)
    result = {"triton": triton, "kserve": kserve}[sys.argv[1]](request)
    json.dump(result, sys.stdout)
