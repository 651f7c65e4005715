"""Builds the edge text model: hashed n-grams -> IDF -> L2 norm -> linear -> softmax, INT8 ONNX.

Training is multinomial logistic regression (scikit-learn, L-BFGS) on the normalised features

    x * idf  ->  / max(||.||_2, 1e-12)  ->  @ W [F, C]  ->  + b  ->  Softmax  ->  "probs"

The graph the board runs (`sparse_int8_graph`) takes the featurizer's non-empty buckets only,
in COO form (a text has a few hundred of its F = 65,536 buckets set), and does the rest itself,
so one file holds every learned number:

    inputs   indices int64 [nnz] (bucket), values float32 [nnz] (raw value),
             segment int64 [nnz] (row of each entry), row_ids int64 [N] (0..N-1)
    graph    weighted = values * idf[indices]
             S = (row_ids[:, None] == segment[None, :])         float [N, nnz]
             norm = max(sqrt(S @ weighted^2), 1e-12)            [N, 1]
             scores = S @ (dequant(Wq[indices]) * weighted[:, None]) / norm + b ;  Softmax

W is stored as int8 with one scale per class column (symmetric, full 8-bit range) and only the
nnz rows a query touches are gathered and dequantized: about 20 KB read per query instead of
the whole 5 MB matrix a dense MatMul streams through. A row's answer does not depend on its
batch neighbours, to within float rounding (about 1e-7: the sums of a batch are blocked
differently).

Build-time only: imports scikit-learn and scipy. Inference needs
only numpy and onnxruntime (`shared.onnx_model` + `shared.text_features`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from shared.text_features import HashedNgramFeaturizer

ONNX_OPSET = 17
ONNX_IR_VERSION = 8  # readable by onnxruntime >= 1.14 on older boards
#: Inverse L2 strength of the logistic regression (scikit-learn's C). Accuracy on BANKING77
#: moved by less than 0.3 points between C = 10 and 100.
DEFAULT_C = 30.0
DEFAULT_MAX_ITER = 300
#: Default size budget of the edge model file: 65,536 buckets up to 87 labels, 32,768 up to 178.
DEFAULT_EDGE_MAX_BYTES = 6_000_000
#: The budget only ever lowers the default 65,536 buckets (more did not help on BANKING77).
MIN_BUCKETS, MAX_BUCKETS = 1024, 1 << 16
#: Bytes of the graph besides the per-bucket and per-label tensors (nodes, names, headers).
GRAPH_OVERHEAD_BYTES = 4096


def edge_model_bytes(num_features: int, num_labels: int) -> int:
    """Size of the sparse INT8 graph: int8 weights F x C, float32 idf F, scale and bias C, overhead."""
    return num_features * num_labels + 4 * num_features + 8 * num_labels + GRAPH_OVERHEAD_BYTES


def buckets_for_budget(num_labels: int, max_bytes: int) -> int:
    """Most hash buckets (a power of two, MIN_BUCKETS..MAX_BUCKETS) whose model fits `max_bytes`;
    MIN_BUCKETS when even those do not fit (the caller reports the overrun)."""
    buckets = MAX_BUCKETS
    while buckets > MIN_BUCKETS and edge_model_bytes(buckets, num_labels) > max_bytes:
        buckets //= 2
    return buckets


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


def quantize_columns(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-column int8: (int8 [F, C], float32 scale [C]) with weight ~= q * scale."""
    peak = np.abs(weight).max(axis=0)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(weight / scale), -127, 127).astype(np.int8)
    return q, scale


def sparse_int8_graph(model: LinearTextModel, name: str):
    """The INT8 graph over COO inputs (see the module docstring)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    num_features, num_classes = model.weight.shape
    weight_q, weight_scale = quantize_columns(model.weight.astype(np.float32))
    node = helper.make_node
    nodes = [
        node("Gather", ["idf", "indices"], ["idf_at"]),
        node("Mul", ["values", "idf_at"], ["weighted"]),
        node("Unsqueeze", ["row_ids", "axis1"], ["row_col"]),
        node("Unsqueeze", ["segment", "axis0"], ["segment_row"]),
        node("Equal", ["row_col", "segment_row"], ["in_row"]),
        node("Cast", ["in_row"], ["S"], to=TensorProto.FLOAT),
        node("Mul", ["weighted", "weighted"], ["squares"]),
        node("Unsqueeze", ["squares", "axis1"], ["squares_col"]),
        node("MatMul", ["S", "squares_col"], ["sum_squares"]),
        node("Sqrt", ["sum_squares"], ["norm"]),
        node("Max", ["norm", "tiny"], ["safe_norm"]),
        node("Gather", ["W_q", "indices"], ["rows_q"], axis=0),
        node("DequantizeLinear", ["rows_q", "W_scale"], ["rows"], axis=1),
        node("Unsqueeze", ["weighted", "axis1"], ["weighted_col"]),
        node("Mul", ["rows", "weighted_col"], ["contributions"]),
        node("MatMul", ["S", "contributions"], ["raw_scores"]),
        node("Div", ["raw_scores", "safe_norm"], ["scores"]),
        node("Add", ["scores", "b"], ["logits"]),
        node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    initializers = [
        numpy_helper.from_array(model.idf.astype(np.float32), "idf"),
        numpy_helper.from_array(weight_q, "W_q"),
        numpy_helper.from_array(weight_scale, "W_scale"),
        numpy_helper.from_array(model.bias.astype(np.float32), "b"),
        numpy_helper.from_array(np.array([1e-12], dtype=np.float32), "tiny"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "axis0"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
    ]
    inputs = [
        helper.make_tensor_value_info("indices", TensorProto.INT64, ["nnz"]),
        helper.make_tensor_value_info("values", TensorProto.FLOAT, ["nnz"]),
        helper.make_tensor_value_info("segment", TensorProto.INT64, ["nnz"]),
        helper.make_tensor_value_info("row_ids", TensorProto.INT64, ["N"]),
    ]
    graph = helper.make_graph(nodes, name, inputs,
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", num_classes])],
                              initializer=initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], producer_name="edgecascade")
    proto.ir_version = ONNX_IR_VERSION
    onnx.checker.check_model(proto)
    return proto


def write_sparse_int8_onnx(path: Path, model: LinearTextModel, name: str) -> Path:
    """Write the INT8 sparse-input graph to `path`."""
    import onnx

    path = Path(path)
    onnx.save(sparse_int8_graph(model, name), path)
    return path
