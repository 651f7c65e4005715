"""Builds the edge text model: hashed n-grams -> IDF -> L2 norm -> linear -> softmax, INT8 ONNX.

The graph takes the featurizer's raw bucket values ("input" float32 [N, F]) and does the rest
itself, so one file holds every learned number:

    x * idf  ->  / max(||.||_2, 1e-12)  ->  MatMul W [F, C]  ->  + b  ->  Softmax  ->  "probs"

Training is multinomial logistic regression (scikit-learn, L-BFGS) on the same normalised
features. The MatMul is then statically INT8-quantized with onnxruntime (QOperator format,
uint8 activations, per-column int8 weights with 7-bit range so CPUs without VNNI do not
saturate). Static activation scales keep each answer independent of its batch neighbours.

Build-time only: imports scikit-learn, scipy and onnxruntime.quantization. Inference needs
only numpy and onnxruntime (`shared.onnx_model` + `shared.text_features`).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from shared.text_features import HashedNgramFeaturizer

log = logging.getLogger(__name__)

ONNX_OPSET = 17
ONNX_IR_VERSION = 8  # readable by onnxruntime >= 1.14 on older boards
#: Inverse L2 strength of the logistic regression (scikit-learn's C). Accuracy on BANKING77
#: moved by less than 0.3 points between C = 10 and 100.
DEFAULT_C = 30.0
DEFAULT_MAX_ITER = 300
#: Training rows used to calibrate the quantized MatMul's output scale (its input range is
#: pinned to [0, 1], see `write_quantized_onnx`).
QUANT_CALIBRATION_ROWS = 512


@dataclass(frozen=True)
class LinearTextModel:
    """idf float32 [F], weight float32 [F, C], bias float32 [C]."""

    idf: np.ndarray
    weight: np.ndarray
    bias: np.ndarray


def sparse_features(featurizer: HashedNgramFeaturizer, texts: Sequence[str]):
    """scipy CSR float32 [N, F] of raw bucket values."""
    import scipy.sparse as sp

    rows, cols, values = featurizer.sparse(texts)
    return sp.csr_matrix((values, (rows, cols)), shape=(len(texts), featurizer.num_features), dtype=np.float32)


def smooth_idf(counts) -> np.ndarray:
    """ln((1 + n) / (1 + df)) + 1 per bucket, from a CSR matrix of training counts."""
    n = counts.shape[0]
    df = np.bincount(counts.indices, minlength=counts.shape[1])
    return (np.log((1.0 + n) / (1.0 + df)) + 1.0).astype(np.float32)


def weighted_normalised(counts, idf: np.ndarray):
    """What the graph computes before the MatMul: rows of counts * idf, L2-normalised."""
    from sklearn.preprocessing import normalize

    return normalize(counts.multiply(idf[None, :]).tocsr(), norm="l2").astype(np.float32)


def train_linear(featurizer: HashedNgramFeaturizer, texts: Sequence[str], y: np.ndarray, num_classes: int,
                 *, C: float = DEFAULT_C, max_iter: int = DEFAULT_MAX_ITER) -> LinearTextModel:
    """Multinomial logistic regression on IDF-weighted, L2-normalised hashed n-grams."""
    counts = sparse_features(featurizer, texts)
    idf = smooth_idf(counts)
    X = weighted_normalised(counts, idf)
    coef, intercept = fit_logistic_regression(X, y, num_classes, C=C, max_iter=max_iter)
    weight = np.ascontiguousarray(coef.T)
    return LinearTextModel(idf=idf, weight=weight, bias=intercept)


def fit_logistic_regression(X, y: np.ndarray, num_classes: int, *, C: float, max_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression (scikit-learn, L-BFGS): (coef float32 [num_classes, d],
    intercept float32 [num_classes]). Classes absent from `y` get a -1e4 intercept and never win."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    classifier = LogisticRegression(C=C, max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a few more iterations change nothing measurable
        classifier.fit(X, y)
    seen = classifier.classes_.astype(np.int64)
    if len(seen) == 2:  # scikit-learn's binary form: one row, the log-odds of the second class
        coef = np.vstack([-classifier.coef_[0], classifier.coef_[0]]) / 2
        intercept = np.array([-classifier.intercept_[0], classifier.intercept_[0]]) / 2
    else:
        coef, intercept = classifier.coef_, classifier.intercept_
    full_coef = np.zeros((num_classes, X.shape[1]), dtype=np.float32)
    full_intercept = np.full(num_classes, -1e4, dtype=np.float32)
    full_coef[seen] = coef
    full_intercept[seen] = intercept
    return full_coef, full_intercept


def float_graph(model: LinearTextModel, name: str):
    """The float32 ONNX graph for `model` (see the module docstring)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    num_features, num_classes = model.weight.shape
    nodes = [
        helper.make_node("Mul", ["input", "idf"], ["weighted"]),
        helper.make_node("ReduceL2", ["weighted"], ["norm"], axes=[1], keepdims=1),
        helper.make_node("Max", ["norm", "tiny"], ["safe_norm"]),
        helper.make_node("Div", ["weighted", "safe_norm"], ["features"]),
        helper.make_node("MatMul", ["features", "W"], ["scores"]),
        helper.make_node("Add", ["scores", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    initializers = [
        numpy_helper.from_array(model.idf.astype(np.float32), "idf"),
        numpy_helper.from_array(np.array([1e-12], dtype=np.float32), "tiny"),
        numpy_helper.from_array(model.weight.astype(np.float32), "W"),
        numpy_helper.from_array(model.bias.astype(np.float32), "b"),
    ]
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, num_features])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, num_classes])],
        initializer=initializers,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], producer_name="edgecascade")
    proto.ir_version = ONNX_IR_VERSION
    onnx.checker.check_model(proto)
    return proto


def write_quantized_onnx(path: Path, model: LinearTextModel, name: str, calibration_inputs: np.ndarray) -> Path:
    """Write the INT8 graph to `path`; `calibration_inputs` are featurizer outputs [n, F].

    The MatMul's input is an L2-normalised non-negative vector, so its values lie in [0, 1].
    One extra calibration row with a single non-zero bucket (normalised to exactly 1) pins the
    activation range to all of [0, 1]: no input saturates, however short the text. The
    training rows set the range of the MatMul's (quantized) output.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    pin = np.zeros((1, calibration_inputs.shape[1]), dtype=np.float32)
    pin[0, 0] = 1.0
    calibration_inputs = np.vstack([pin, calibration_inputs])

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([{"input": calibration_inputs[i : i + 256]} for i in range(0, len(calibration_inputs), 256)])

        def get_next(self):
            return next(self._batches, None)

    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="edgecascade-quant-") as tmp:
        float_path = Path(tmp) / "float.onnx"
        onnx.save(float_graph(model, name), float_path)
        root_logger = logging.getLogger()
        root_logger.addFilter(_drop_preprocessing_advice)
        try:
            quantize_static(
                float_path,
                path,
                Reader(),
                quant_format=QuantFormat.QOperator,
                op_types_to_quantize=["MatMul"],
                per_channel=True,
                reduce_range=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
        finally:
            root_logger.removeFilter(_drop_preprocessing_advice)
    return path


def _drop_preprocessing_advice(record: logging.LogRecord) -> bool:
    """onnxruntime's quantizer logs shape-inference advice that does not apply to this graph."""
    return "pre-processing" not in record.getMessage()
