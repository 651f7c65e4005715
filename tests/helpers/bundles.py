"""Tiny real ONNX model bundles with real policies, and inputs the edge answers or defers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from shared.model_card import InputSpec, ModelCard, save_card
from shared.policy import PolicyFile, save_policy

LABELS = ["a", "b", "c"]


def make_softmax_bundle(bundle_dir: Path, *, name: str, scale: float, version: int = 1, threshold: float = 0.6,
                        min_threshold: float | None = None, max_input_tokens: int | None = None,
                        permute: bool = False, delay_loop: int = 0) -> Path:
    """probs = softmax(scale * x @ P) for x float32 [3]; P is the identity or a label rotation.

    A real ONNX graph with a real policy: confidence grows with |x| * scale.
    """
    bundle_dir.mkdir(parents=True, exist_ok=True)
    weights = np.roll(np.eye(3, dtype=np.float32), 1, axis=1) if permute else np.eye(3, dtype=np.float32)
    weights = weights * np.float32(scale)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["logits"]), helper.make_node("Softmax", ["logits"], ["probs"], axis=1)],
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, 3])],
        initializer=[helper.make_tensor("W", TensorProto.FLOAT, [3, 3], weights.flatten().tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, bundle_dir / "model.onnx")
    card = ModelCard(name=name, version=version, labels=LABELS, runtime="onnx",
                     input=InputSpec(kind="tensor", dtype="float32", shape=[3]))
    save_card(bundle_dir, card)
    save_policy(bundle_dir, PolicyFile(model_name=name, model_version=version, labels=LABELS, threshold=threshold,
                                       min_threshold=min_threshold, max_input_tokens=max_input_tokens))
    return bundle_dir


#: Inputs the edge answers (confident) and inputs it defers, for the bundles above.
CONFIDENT = np.array([4.0, 0.0, 0.0], dtype=np.float32)
UNSURE = np.array([0.2, 0.1, 0.0], dtype=np.float32)
