"""Builds the `edgecascade demo` model pair from scikit-learn's bundled handwritten digits.

Inputs are 8x8 images flattened row-major to 64 float32 values, pixel intensity / 16 (in [0, 1]).

- edge: 64 -> 8 ReLU -> 10, trained with scikit-learn, written as a plain ONNX graph
  ("input" [N, 64] -> "probs" [N, 10], softmax inside), then statically INT8-quantized with
  onnxruntime (QOperator: QLinearMatMul, uint8 activations, int8 weights with 7-bit range so
  x86 CPUs without VNNI do not saturate). Static scales make an answer independent of the
  other inputs in its batch. Deliberately tiny: the cascade has something to add.
- cloud: 64 -> 512 -> 256 -> 10 torch MLP (runtime "torch_mlp"), trained on the training
  split plus its 1-pixel shifts (up, down, left, right).
- policy: max_prob threshold at the calibration split's 25 % quantile of edge confidence (so
  about a quarter defers), min_threshold at its 5 % quantile (full cloud pressure). A plain
  demo default; `edgecascade calibrate` computes a certified one.

Nothing here runs at import time; torch, sklearn and the quantizer are imported by `build_demo`.

`build_demo` calls `on_step(step)` after each of BUILD_STEPS has written its files; the cache
uses it to stop at the next step after a Ctrl-C that a library swallowed (scikit-learn's MLP
training catches KeyboardInterrupt and returns early), and for its test-only pause hook.
"""

from __future__ import annotations

import importlib
import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from edgecascade.offline.onnx_mlp import mlp_onnx_graph
from shared.model_card import InputSpec, ModelCard, save_card
from shared.policy import PolicyFile, save_policy

log = logging.getLogger(__name__)

SEED = 7
LABELS = [str(digit) for digit in range(10)]
#: load_digits has 1797 images; split stratified by digit.
TRAIN_SIZE = 997
CALIBRATION_SIZE = 350
TEST_SIZE = 450
EDGE_NAME = "digits-edge"
CLOUD_NAME = "digits-cloud"
EDGE_HIDDEN = 8
CLOUD_HIDDEN = (512, 256)
CLOUD_EPOCHS = 16
TARGET_DEFER_RATE = 0.25
PRESSURE_DEFER_RATE = 0.05
#: What `build_demo` has written when it calls `on_step`: the two splits, the edge bundle
#: (no policy yet), the cloud bundle, the edge policy.
BUILD_STEPS = ("data", "edge", "cloud", "policy")


def load_digit_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The fixed, seeded train / calibration / test split: X float32 [n, 64] in [0, 1], y int64."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    images, digits = load_digits(return_X_y=True)
    X = (images / 16.0).astype(np.float32)
    y = digits.astype(np.int64)
    X_train, X_rest, y_train, y_rest = train_test_split(X, y, train_size=TRAIN_SIZE, stratify=y, random_state=SEED)
    X_cal, X_test, y_cal, y_test = train_test_split(
        X_rest, y_rest, train_size=CALIBRATION_SIZE, test_size=TEST_SIZE, stratify=y_rest, random_state=SEED
    )
    return {"train": (X_train, y_train), "calibration": (X_cal, y_cal), "test": (X_test, y_test)}


def build_demo(out_dir: Path, on_step: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
    """Write edge/, cloud/, calibration.npz and test.npz under `out_dir`; return the build facts.

    `on_step(step)` is called after each of BUILD_STEPS; an exception from it ends the build."""
    step_done = on_step or (lambda step: None)
    started = time.perf_counter()
    _import_build_dependencies()
    splits = load_digit_splits()
    X_train, y_train = splits["train"]
    for name in ("calibration", "test"):
        X, y = splits[name]
        np.savez(out_dir / f"{name}.npz", X=X, y=y)
    step_done("data")

    edge_dir = out_dir / "edge"
    edge_dir.mkdir()
    weights, biases = train_edge_mlp(X_train, y_train)
    write_edge_onnx(edge_dir / "model.onnx", weights, biases, calibration_inputs=X_train)
    save_card(
        edge_dir,
        ModelCard(
            name=EDGE_NAME,
            version=1,
            labels=LABELS,
            input=InputSpec(kind="tensor", dtype="float32", shape=[64]),
            runtime="onnx",
            file="model.onnx",
            options={"intra_op_threads": 1},
        ),
    )
    edge_s = time.perf_counter() - started
    step_done("edge")

    cloud_dir = out_dir / "cloud"
    net = train_cloud_mlp(X_train, y_train)
    from cloud_router.torch_mlp import save_mlp_bundle

    save_mlp_bundle(cloud_dir, net, name=CLOUD_NAME, version=1, labels=LABELS)
    cloud_s = time.perf_counter() - started - edge_s
    step_done("cloud")

    facts = _evaluate_and_write_policy(out_dir, splits)
    step_done("policy")
    X_test, y_test = splits["test"]
    facts["accuracy"]["test"]["edge_float"] = round(float((_mlp_numpy(X_test, weights, biases).argmax(1) == y_test).mean()), 4)
    facts["split"] = {"seed": SEED, "train": TRAIN_SIZE, "calibration": CALIBRATION_SIZE, "test": TEST_SIZE}
    facts["build_s"] = {"edge": round(edge_s, 2), "cloud": round(cloud_s, 2), "total": round(time.perf_counter() - started, 2)}
    facts["files"] = {
        str(path.relative_to(out_dir)): path.stat().st_size for path in sorted(out_dir.rglob("*")) if path.is_file()
    }
    return facts


def _import_build_dependencies() -> None:
    """Fail in a second, not after training, when the cloud extra is missing (torch first)."""
    for name in ("torch", "sklearn", "safetensors", "onnx", "onnxruntime.quantization"):
        importlib.import_module(name)


def train_edge_mlp(X: np.ndarray, y: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A 64 -> EDGE_HIDDEN -> 10 ReLU MLP fitted with scikit-learn; returns its weights and biases."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    classifier = MLPClassifier(hidden_layer_sizes=(EDGE_HIDDEN,), alpha=1e-3, max_iter=500, random_state=SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a fixed iteration budget is the point
        classifier.fit(X, y)
    return [w.astype(np.float32) for w in classifier.coefs_], [b.astype(np.float32) for b in classifier.intercepts_]


def _mlp_numpy(X: np.ndarray, weights, biases) -> np.ndarray:
    """Logits of the float edge MLP, to measure what INT8 quantization costs."""
    for weight, bias in zip(weights[:-1], biases[:-1]):
        X = np.maximum(X @ weight + bias, 0.0)
    return X @ weights[-1] + biases[-1]


def write_edge_onnx(path: Path, weights, biases, *, calibration_inputs: np.ndarray) -> None:
    """The float graph, INT8-quantized statically (scales from `calibration_inputs`), saved at `path`."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _OneBatch(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([{"input": calibration_inputs}])

        def get_next(self):
            return next(self._batches, None)

    with tempfile.TemporaryDirectory(prefix="edgecascade-onnx-") as scratch:
        float_path = Path(scratch) / "float.onnx"
        prepared_path = Path(scratch) / "prepared.onnx"
        onnx.save(mlp_onnx_graph(weights, biases), float_path)
        quant_pre_process(str(float_path), str(prepared_path), skip_optimization=True, skip_symbolic_shape=True)
        quantize_static(
            str(prepared_path),
            str(path),
            _OneBatch(),
            quant_format=QuantFormat.QOperator,
            op_types_to_quantize=["MatMul"],
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            reduce_range=True,
            calibrate_method=CalibrationMethod.MinMax,
        )


def train_cloud_mlp(X: np.ndarray, y: np.ndarray):
    """The cloud MLP, trained on the split plus 1-pixel shifts; one torch thread, seeded, a few seconds."""
    import torch

    from cloud_router.torch_mlp import MLP

    X_aug, y_aug = with_pixel_shifts(X, y)
    inputs, targets = torch.from_numpy(X_aug), torch.from_numpy(y_aug)
    batch_size = 128
    steps_per_epoch = (len(inputs) + batch_size - 1) // batch_size
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            net = MLP(64, CLOUD_HIDDEN, len(LABELS), dropout=0.2)
            optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
            schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=CLOUD_EPOCHS * steps_per_epoch)
            order = torch.Generator().manual_seed(SEED)
            net.train()
            for _ in range(CLOUD_EPOCHS):
                permutation = torch.randperm(len(inputs), generator=order)
                for start in range(0, len(inputs), batch_size):
                    batch = permutation[start : start + batch_size]
                    loss = torch.nn.functional.cross_entropy(net(inputs[batch]), targets[batch])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    schedule.step()
            net.eval()
    finally:
        torch.set_num_threads(previous_threads)
    return net


def with_pixel_shifts(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """X and its copies shifted one pixel up, down, left and right (zeros shifted in)."""
    images = X.reshape(-1, 8, 8)
    copies = [images]
    for axis in (1, 2):
        for step in (-1, 1):
            shifted = np.roll(images, step, axis=axis)
            edge = 0 if step == 1 else -1
            if axis == 1:
                shifted[:, edge, :] = 0
            else:
                shifted[:, :, edge] = 0
            copies.append(shifted)
    return np.concatenate(copies).reshape(-1, 64).astype(np.float32), np.tile(y, len(copies))


def _evaluate_and_write_policy(out_dir: Path, splits) -> dict[str, Any]:
    """Run both bundles through the real runtimes, pick the demo thresholds, write policy.json."""
    from shared.model_loader import load_model
    from shared.signals import confidence_scores

    edge, cloud = load_model(out_dir / "edge", edge=True), load_model(out_dir / "cloud")
    edge.load()
    cloud.load()
    probs = {
        name: (edge.predict(list(splits[name][0])), cloud.predict(list(splits[name][0]))) for name in ("calibration", "test")
    }
    edge.unload()
    cloud.unload()

    cal_scores = confidence_scores(probs["calibration"][0], "max_prob")
    threshold = float(np.quantile(cal_scores, TARGET_DEFER_RATE))
    min_threshold = float(np.quantile(cal_scores, PRESSURE_DEFER_RATE))
    save_policy(
        out_dir / "edge",
        PolicyFile(
            model_name=EDGE_NAME,
            model_version=1,
            labels=LABELS,
            signal="max_prob",
            threshold=threshold,
            min_threshold=min_threshold,
            guarantee={
                "method": "defer_rate_quantile",
                "target_defer_rate": TARGET_DEFER_RATE,
                "pressure_defer_rate": PRESSURE_DEFER_RATE,
                "split": "calibration",
                "n": int(len(cal_scores)),
                "note": "demo default, not a certified bound; run `edgecascade calibrate` for one",
            },
        ),
    )

    accuracy: dict[str, dict[str, float]] = {}
    for name, (edge_probs, cloud_probs) in probs.items():
        truth = splits[name][1]
        edge_pred, cloud_pred = edge_probs.argmax(axis=1), cloud_probs.argmax(axis=1)
        accept = confidence_scores(edge_probs, "max_prob") >= threshold
        cascade_pred = np.where(accept, edge_pred, cloud_pred)
        accuracy[name] = {
            "edge": round(float((edge_pred == truth).mean()), 4),
            "cloud": round(float((cloud_pred == truth).mean()), 4),
            "cascade": round(float((cascade_pred == truth).mean()), 4),
            "defer_rate": round(float(1.0 - accept.mean()), 4),
            "edge_agrees_with_cloud": round(float((edge_pred == cloud_pred).mean()), 4),
        }
    log.info("demo models: test accuracy %s", accuracy["test"])
    return {
        "accuracy": accuracy,
        "policy": {"signal": "max_prob", "threshold": threshold, "min_threshold": min_threshold},
    }
