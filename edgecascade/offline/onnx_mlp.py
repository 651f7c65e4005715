"""The one builder of a float ReLU-MLP ONNX graph with softmax output: "input" [N, in] ->
(MatMul, Add, Relu)* -> MatMul, Add -> Softmax -> "probs" [N, classes]. The demo's edge model,
the delta and swap benchmarks' models and the delta tests' models are all built here."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

ONNX_OPSET = 17
ONNX_IR_VERSION = 8  # readable by onnxruntime >= 1.14 on older boards


def mlp_onnx_graph(weights: Sequence[np.ndarray], biases: Sequence[np.ndarray], *,
                   tensor_names: Optional[Sequence[tuple[str, str]]] = None,
                   extra_initializers: Optional[Mapping[str, np.ndarray]] = None, graph_name: str = "edge_mlp"):
    """The checked ONNX model. Layer i's tensors are "fc{i}.weight" and "fc{i}.bias", or the
    (weight, bias) pair `tensor_names[i]`; `extra_initializers` ride along unused."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    names = list(tensor_names) if tensor_names is not None else [(f"fc{i}.weight", f"fc{i}.bias") for i in range(len(weights))]
    nodes, initializers = [], []
    current = "input"
    for index, (weight, bias) in enumerate(zip(weights, biases)):
        weight_name, bias_name = names[index]
        last = index == len(weights) - 1
        initializers += [numpy_helper.from_array(np.asarray(weight, np.float32), weight_name),
                         numpy_helper.from_array(np.asarray(bias, np.float32), bias_name)]
        nodes.append(helper.make_node("MatMul", [current, weight_name], [f"fc{index}.matmul"], name=f"fc{index}_matmul"))
        added = "logits" if last else f"fc{index}.add"
        nodes.append(helper.make_node("Add", [f"fc{index}.matmul", bias_name], [added], name=f"fc{index}_add"))
        if not last:
            nodes.append(helper.make_node("Relu", [added], [f"fc{index}.relu"], name=f"fc{index}_relu"))
            current = f"fc{index}.relu"
    nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=-1, name="softmax"))
    initializers += [numpy_helper.from_array(value, name) for name, value in (extra_initializers or {}).items()]
    graph = helper.make_graph(
        nodes,
        graph_name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", weights[0].shape[0]])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", weights[-1].shape[1]])],
        initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], ir_version=ONNX_IR_VERSION, producer_name="edgecascade"
    )
    onnx.checker.check_model(model)
    return model


def save_mlp_onnx(path: Path, weights: Sequence[np.ndarray], biases: Sequence[np.ndarray], **options) -> Path:
    """`mlp_onnx_graph(weights, biases, **options)` saved at `path`; returns `path`."""
    import onnx

    onnx.save(mlp_onnx_graph(weights, biases, **options), str(path))
    return Path(path)
