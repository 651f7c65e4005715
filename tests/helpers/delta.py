"""Small model files for the delta tests: ONNX MLPs and safetensors dicts, built in tmp dirs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import save_file


def mlp_weights(seed: int = 0, hidden: int = 96) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w1": rng.standard_normal((64, hidden)).astype(np.float32) * 0.1,
        "b1": rng.standard_normal(hidden).astype(np.float32) * 0.01,
        "w2": rng.standard_normal((hidden, 10)).astype(np.float32) * 0.1,
        "b2": rng.standard_normal(10).astype(np.float32) * 0.01,
        "q": rng.integers(-128, 128, size=(128, 128)).astype(np.int8),
    }


def write_onnx_mlp(path: Path, weights: dict[str, np.ndarray]) -> Path:
    """x[N,64] -> softmax(relu(x@w1+b1)@w2+b2) as `probs`; `q` is an unused int8 initializer."""
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["l0"]),
        helper.make_node("Add", ["l0", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, 10])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    save_file(tensors, str(path))
    return path


def nudge(array: np.ndarray, scale: float = 1e-3, seed: int = 1) -> np.ndarray:
    """A small fine-tune-like update of a float array."""
    rng = np.random.default_rng(seed)
    return (array * (1 + scale * rng.standard_normal(array.shape))).astype(array.dtype)
