"""Small model files for the delta tests: ONNX MLPs and safetensors dicts, built in tmp dirs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from edgecascade.offline.onnx_mlp import save_mlp_onnx


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
    return save_mlp_onnx(path, [weights["w1"], weights["w2"]], [weights["b1"], weights["b2"]],
                         tensor_names=[("w1", "b1"), ("w2", "b2")], extra_initializers={"q": weights["q"]}, graph_name="mlp")


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    save_file(tensors, str(path))
    return path


def nudge(array: np.ndarray, scale: float = 1e-3, seed: int = 1) -> np.ndarray:
    """A small fine-tune-like update of a float array."""
    rng = np.random.default_rng(seed)
    return (array * (1 + scale * rng.standard_normal(array.shape))).astype(array.dtype)
