"""The sparse-input INT8 edge text graph: the same function as the dense float reference (up to
int8 rounding), rows independent of each other, empty texts, and a clear error for a card
that cannot feed it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgecascade.offline.text_edge_build import LinearTextModel, quantize_columns, sparse_int8_graph
from shared.errors import ConfigError
from shared.model_card import InputSpec, ModelCard, save_card
from shared.model_loader import load_model
from shared.text_features import featurizer_from_options

FEATURIZER = {"kind": "hashed_ngrams", "num_features": 1024, "word_ngrams": [1, 2], "char_ngrams": [2, 4]}
TEXTS = ["I am still waiting on my card?", "top up failed", "", "!!!", "why was I charged twice for one transfer"]


@pytest.fixture(scope="module")
def linear() -> LinearTextModel:
    rng = np.random.default_rng(3)
    return LinearTextModel(idf=(1.0 + rng.random(1024)).astype(np.float32),
                           weight=rng.standard_normal((1024, 6)).astype(np.float32),
                           bias=rng.standard_normal(6).astype(np.float32))


def dense_float_reference(linear: LinearTextModel, x: np.ndarray) -> np.ndarray:
    """The function the graph computes, in float32 numpy over dense features [N, F]."""
    weighted = x * linear.idf
    norm = np.maximum(np.linalg.norm(weighted, axis=1, keepdims=True), 1e-12)
    logits = (weighted / norm) @ linear.weight + linear.bias
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def bundle(tmp_path, linear, *, featurizer=True, featurizer_options=FEATURIZER):
    import onnx

    onnx.save(sparse_int8_graph(linear, "tiny"), tmp_path / "model.onnx")
    options = {"featurizer": featurizer_options} if featurizer else {}
    save_card(tmp_path, ModelCard(name="tiny", version=1, labels=[f"c{i}" for i in range(6)], runtime="onnx",
                                  input=InputSpec(kind="text"), options=options))
    return tmp_path


def test_sparse_graph_matches_the_dense_float_reference(tmp_path, linear):
    featurize = featurizer_from_options(FEATURIZER)
    dense = dense_float_reference(linear, featurize(TEXTS))
    model = load_model(bundle(tmp_path, linear), edge=True)
    model.load()
    probs = model.predict(TEXTS)
    assert probs.shape == (len(TEXTS), 6) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, dense, atol=0.02)  # int8 weights: 1/254 of each column's range
    assert (probs.argmax(1) == dense.argmax(1)).mean() >= 0.8


def test_rows_do_not_depend_on_their_batch(tmp_path, linear):
    model = load_model(bundle(tmp_path, linear), edge=True)
    model.load()
    batch = model.predict(TEXTS)
    singles = np.concatenate([model.predict([t]) for t in TEXTS])
    np.testing.assert_allclose(batch, singles, atol=1e-6)  # a batch's sums are blocked differently
    assert np.array_equal(batch.argmax(1), singles.argmax(1))


def test_texts_without_features_give_the_bias_softmax(tmp_path, linear):
    """With word unigrams only, "" and "!!!" set no bucket at all (no words, no n-grams)."""
    model = load_model(bundle(tmp_path, linear, featurizer_options={**FEATURIZER, "word_ngrams": [1, 1]}), edge=True)
    model.load()
    expected = np.exp(linear.bias - linear.bias.max())
    expected /= expected.sum()
    for batch in (["", "!!!"], ["!!!"], ["", "top up failed"]):
        probs = model.predict(batch)
        assert np.all(np.isfinite(probs))
        empty_rows = [i for i, t in enumerate(batch) if t in ("", "!!!")]
        np.testing.assert_allclose(probs[empty_rows], np.tile(expected, (len(empty_rows), 1)), atol=1e-6)


def test_quantized_columns_round_trip_within_half_a_step(linear):
    q, scale = quantize_columns(linear.weight)
    assert q.dtype == np.int8 and scale.shape == (6,)
    assert np.all(np.abs(q.astype(np.float32) * scale - linear.weight) <= scale / 2 + 1e-7)
    zero_q, zero_scale = quantize_columns(np.zeros((4, 2), np.float32))
    assert np.all(zero_q == 0) and np.all(zero_scale == 1.0)


def test_sparse_graph_without_a_featurizer_is_a_config_error(tmp_path, linear):
    model = load_model(bundle(tmp_path, linear, featurizer=False), edge=True)
    with pytest.raises(ConfigError, match="sparse features"):
        model.load()
    assert json.loads((tmp_path / "model.json").read_text())["input"]["kind"] == "text"
