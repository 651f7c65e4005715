"""The per-request helpers both daemons run on every call: fast paths must give the same answers
and refuse the same bad inputs as the plain versions."""

from __future__ import annotations

import numpy as np
import pytest

from protos import edgecascade_pb2 as pb
from shared.errors import InvalidInputError
from shared.model_loader import load_model
from shared.prediction import Prediction
from shared.proto_convert import response_of
from shared.request_parsing import request_id_of
from shared.sdk import InferResult, build_request
from shared.signals import Signals, signal_matrix, signals_of
from shared.tensor_codec import from_proto, to_proto
from tests.helpers.bundles import make_softmax_bundle


@pytest.mark.parametrize("classes", [2, 3, 10, 77])
def test_signals_of_matches_signal_matrix(classes):
    rng = np.random.default_rng(classes)
    for _ in range(50):
        probs = rng.dirichlet(np.ones(classes) * rng.uniform(0.05, 3.0)).astype(np.float32)
        one = signals_of(probs)
        many = signal_matrix(probs[None, :])
        assert one.max_prob == pytest.approx(many["max_prob"][0], abs=1e-12)
        assert one.margin == pytest.approx(many["margin"][0], abs=1e-12)
        assert one.entropy == pytest.approx(many["entropy"][0], abs=1e-12)


def test_signals_of_a_certain_vector():
    assert signals_of(np.array([0.0, 1.0, 0.0], np.float32)) == Signals(1.0, 1.0, 0.0)


@pytest.mark.parametrize("array", [
    np.arange(6, dtype=">f4").reshape(2, 3),                    # big-endian
    np.arange(12, dtype=np.int64).reshape(3, 4)[:, ::2],         # not contiguous
    np.array([True, False]),
    np.arange(3, dtype=np.uint8),
    np.float32(2.5),                                             # a scalar
])
def test_tensor_round_trip(array):
    back = from_proto(to_proto(array))
    assert back.dtype.byteorder in "<=|"
    assert back.shape == np.shape(array)
    assert np.array_equal(back, array)


@pytest.mark.parametrize("array", [np.array(["a"]), np.array([1 + 2j]), np.array([object()])])
def test_to_proto_refuses_other_dtypes(array):
    with pytest.raises(InvalidInputError, match="is not supported"):
        to_proto(array)


@pytest.mark.parametrize("tensor, message", [
    (pb.Tensor(dtype="str", shape=[1], data=b"a"), "is not supported"),
    (pb.Tensor(dtype="float32", shape=[-1], data=b""), "negative or absurd"),
    (pb.Tensor(dtype="float32", shape=[1 << 40], data=b""), "negative or absurd"),
    (pb.Tensor(dtype="float32", shape=[0], data=b""), "empty"),
    (pb.Tensor(dtype="float32", shape=[2], data=b"1234"), "needs 8"),
])
def test_from_proto_refuses_bad_tensors(tensor, message):
    with pytest.raises(InvalidInputError, match=message):
        from_proto(tensor)


def test_generated_request_ids_are_unique_and_caller_ids_kept():
    ids = {request_id_of(pb.InferRequest()) for _ in range(1000)}
    assert len(ids) == 1000 and all(len(i) == 32 for i in ids)
    assert request_id_of(pb.InferRequest(request_id="mine")) == "mine"
    with pytest.raises(InvalidInputError, match="longer than 128"):
        request_id_of(pb.InferRequest(request_id="x" * 129))


def test_check_input_accepts_and_refuses(tmp_path):
    model = load_model(make_softmax_bundle(tmp_path / "m", name="m", scale=1.0), edge=True)
    good = np.array([1.0, 2.0, 3.0], np.float32)
    assert model.check_input(good) is good
    assert model.check_input(good.astype(">f4")) is not None          # byte order is not a dtype
    for bad, message in [(good.astype(np.float64), "dtype float32"), (good[:2], "shape"),
                         (good.reshape(1, 3), "shape"), (np.array([1.0, np.nan, 0.0], np.float32), "NaN"),
                         (np.array([np.inf, 0.0, 0.0], np.float32), "infinity"), ("text", "got text")]:
        with pytest.raises(InvalidInputError, match=message):
            model.check_input(bad)


def test_response_and_sdk_result_round_trip():
    probs = np.array([0.1, 0.7, 0.2], np.float32)
    prediction = Prediction.from_probs(probs, ["a", "b", "c"], "m", 3)
    response = response_of(prediction, request_id="r1", route="edge", signals=signals_of(probs), edge_ms=0.5)
    result = InferResult.from_proto(pb.InferResponse.FromString(response.SerializeToString()))
    assert (result.request_id, result.label, result.label_name, result.served_by) == ("r1", 1, "b", "edge")
    assert np.array_equal(result.probabilities, probs)
    assert result.max_prob == pytest.approx(0.7) and result.margin == pytest.approx(0.5)
    assert result.model_name == "m" and result.model_version == "3" and result.edge_ms == 0.5
    assert not response_of(prediction, request_id="r2", route="cloud").HasField("signals")


def test_build_request_carries_tensor_or_text():
    request = build_request(np.ones(3, np.float32), model="m", request_id="r", priority=2, timeout_s=1.5)
    assert request.WhichOneof("input") == "tensor" and request.timeout_ms == 1500.0 and request.priority == 2
    assert np.array_equal(from_proto(request.tensor), np.ones(3, np.float32))
    assert build_request("hello", model="", request_id="", priority=0, timeout_s=1.0).text == "hello"
