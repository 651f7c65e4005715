"""What several benchmarks use: where results go, the machine they ran on, request bytes,
medians, and the float MLP ONNX graph the delta and swap benchmarks diff and swap."""

from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from protos import edgecascade_pb2 as pb
from shared.tensor_codec import to_proto

#: Where `edgecascade bench ...` writes its JSON by default (relative to the working directory).
RESULTS_DIR = Path("benchmarks/results")


def machine_description() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def request_bytes(payload: Any) -> bytes:
    request = pb.InferRequest(timeout_ms=30_000)
    if isinstance(payload, str):
        request.text = payload
    else:
        request.tensor.CopyFrom(to_proto(np.asarray(payload)))
    return request.SerializeToString()


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def mlp_to_onnx(coefs: list[np.ndarray], intercepts: list[np.ndarray], path: Path) -> Path:
    """ONNX graph for a ReLU MLP with softmax output: input `input` [N, D], output `probs`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, x = [], [], "input"
    for i, (w, b) in enumerate(zip(coefs, intercepts)):
        inits += [numpy_helper.from_array(w.astype(np.float32), f"W{i}"), numpy_helper.from_array(b.astype(np.float32), f"B{i}")]
        nodes += [helper.make_node("MatMul", [x, f"W{i}"], [f"mm{i}"]), helper.make_node("Add", [f"mm{i}", f"B{i}"], [f"z{i}"])]
        x = f"z{i}"
        if i < len(coefs) - 1:
            nodes.append(helper.make_node("Relu", [x], [f"a{i}"]))
            x = f"a{i}"
    nodes.append(helper.make_node("Softmax", [x], ["probs"], axis=1))
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, coefs[0].shape[0]])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, coefs[-1].shape[1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path
