"""KServe v2 codec: datatypes, raw and typed contents, BYTES framing, parameters, and wire
compatibility of our proto with the one tritonclient ships."""

from __future__ import annotations

import struct
import time

import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from shared.errors import InvalidInputError
from shared.kserve_backend import InferenceRequest, InferenceResult
from shared.kserve_codec import (
    CONTENTS_FIELD_BY_DATATYPE,
    DTYPE_BY_DATATYPE,
    datatype_for_dtype,
    decode_bytes_elements,
    decode_inputs,
    decode_request,
    encode_bytes_elements,
    encode_response,
    schedule_parameters,
)

NUMERIC = [name for name in DTYPE_BY_DATATYPE if name != "BYTES"]


def sample(datatype: str) -> np.ndarray:
    dtype = DTYPE_BY_DATATYPE[datatype]
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    info = np.iinfo(dtype) if dtype.kind in "iu" else None
    if info is not None:  # the extremes catch sign and width mistakes
        return np.array([[info.min, 0, info.max], [1, 2, 3]], dtype=dtype)
    return np.array([[-1.5, 0.0, 2.25], [1e-3, 3.0, -7.0]], dtype=dtype)


def raw_request(*tensors: tuple[str, str, np.ndarray | list, bytes]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    for name, datatype, shape, raw in tensors:
        request.inputs.add(name=name, datatype=datatype, shape=list(shape))
        request.raw_input_contents.append(raw)
    return request


@pytest.mark.parametrize("datatype", NUMERIC)
def test_raw_numeric_inputs_round_trip(datatype):
    array = sample(datatype)
    request = raw_request(("x", datatype, array.shape, array.tobytes()))
    decoded = decode_inputs(request)["x"]
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    np.testing.assert_array_equal(decoded, array)


@pytest.mark.parametrize("datatype", [name for name in NUMERIC if name != "FP16"])
def test_typed_numeric_inputs_round_trip(datatype):
    array = sample(datatype)
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=list(array.shape))
    getattr(tensor.contents, CONTENTS_FIELD_BY_DATATYPE[datatype]).extend(array.ravel().tolist())
    decoded = decode_inputs(request)["x"]
    assert decoded.dtype == array.dtype
    np.testing.assert_array_equal(decoded, array)


def test_bytes_inputs_raw_and_typed_decode_to_str_arrays():
    texts = ["hello", "", "naïve café", "x" * 300]
    raw = raw_request(("t", "BYTES", [2, 2], encode_bytes_elements(texts)))
    typed = pb.ModelInferRequest(model_name="m")
    typed.inputs.add(name="t", datatype="BYTES", shape=[2, 2]).contents.bytes_contents.extend(
        [t.encode() for t in texts]
    )
    for request in (raw, typed):
        decoded = decode_inputs(request)["t"]
        assert decoded.dtype == object and decoded.shape == (2, 2)
        assert decoded.ravel().tolist() == texts


def test_bytes_framing_is_a_little_endian_length_prefix():
    assert encode_bytes_elements([b"ab", "c"]) == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 1) + b"c"
    assert decode_bytes_elements(encode_bytes_elements([b"", b"\x00\xff"]), 2, "t") == [b"", b"\x00\xff"]


@pytest.mark.parametrize(
    "raw, count, message",
    [
        (struct.pack("<I", 5) + b"abc", 1, "claims 5 bytes but only 3 remain"),
        (encode_bytes_elements(["a", "b"]) + b"zz", 2, "2 bytes left over"),
        (encode_bytes_elements(["a"]) + b"\x01\x00", 2, "too few for 2 BYTES elements"),
        (encode_bytes_elements(["a"]) + b"\x01\x00\x00\x00", 2, "claims 1 bytes but only 0 remain"),
        (b"", 1, "too few"),
    ],
)
def test_malformed_bytes_content_is_refused_with_the_reason(raw, count, message):
    with pytest.raises(InvalidInputError, match=message):
        decode_bytes_elements(raw, count, "input 't'")


def test_bytes_that_are_not_utf8_are_refused():
    request = raw_request(("t", "BYTES", [1], encode_bytes_elements([b"\xff\xfe"])))
    with pytest.raises(InvalidInputError, match="not valid UTF-8"):
        decode_inputs(request)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda r: r.inputs[0].shape.__setitem__(0, 3), "has 24 bytes of raw content but shape \\[3, 3\\] of FP32 needs 36"),
        (lambda r: r.inputs[0].__setattr__("datatype", "FP8"), "datatype 'FP8' is not supported"),
        (lambda r: r.inputs[0].shape.__setitem__(0, -1), "concrete"),
        (lambda r: r.raw_input_contents.append(b"x"), "raw_input_contents has 2 entries but the request has 1 inputs"),
        (lambda r: r.inputs[0].contents.fp32_contents.append(1.0), "no input may also carry typed contents"),
        (lambda r: r.MergeFrom(raw_request(("x", "FP32", [1], b"\0" * 4))), "appears more than once"),
        (lambda r: r.inputs[0].parameters["shared_memory_region"].MergeFrom(pb.InferParameter(string_param="r")), "shared-memory"),
    ],
)
def test_bad_raw_requests_are_refused_with_a_clear_message(build, message):
    request = raw_request(("x", "FP32", [2, 3], np.zeros((2, 3), np.float32).tobytes()))
    build(request)
    with pytest.raises(InvalidInputError, match=message):
        decode_inputs(request)


def test_typed_contents_problems_are_named():
    def typed(datatype, field, values, shape):
        request = pb.ModelInferRequest(model_name="m")
        getattr(request.inputs.add(name="x", datatype=datatype, shape=shape).contents, field).extend(values)
        return request

    with pytest.raises(InvalidInputError, match="3 elements in fp32_contents but shape \\[2, 2\\] needs 4"):
        decode_inputs(typed("FP32", "fp32_contents", [1, 2, 3], [2, 2]))
    with pytest.raises(InvalidInputError, match="belong in fp32_contents, not int_contents"):
        decode_inputs(typed("FP32", "int_contents", [1], [1]))
    with pytest.raises(InvalidInputError, match="outside \\[-128, 127\\]"):
        decode_inputs(typed("INT8", "int_contents", [200], [1]))
    with pytest.raises(InvalidInputError, match="FP16, which has no typed contents field"):
        decode_inputs(typed("FP16", "fp32_contents", [1.0], [1]))
    no_data = pb.ModelInferRequest(model_name="m")
    no_data.inputs.add(name="x", datatype="FP32", shape=[2])
    with pytest.raises(InvalidInputError, match="0 elements in fp32_contents but shape \\[2\\] needs 2"):
        decode_inputs(no_data)
    with pytest.raises(InvalidInputError, match="no inputs"):
        decode_inputs(pb.ModelInferRequest(model_name="m"))


def test_bool_raw_content_must_be_zero_or_one():
    with pytest.raises(InvalidInputError, match="other than 0 and 1"):
        decode_inputs(raw_request(("b", "BOOL", [2], b"\x01\x07")))


def test_timeout_is_microseconds_and_priority_passes_through():
    assert schedule_parameters({}) == (None, 0)
    assert schedule_parameters({"timeout": 250_000, "priority": 2}) == (0.25, 2)
    assert schedule_parameters({"timeout": 0}) == (None, 0)  # 0 means no timeout
    with pytest.raises(InvalidInputError, match="'timeout' must not be negative"):
        schedule_parameters({"timeout": -1})
    with pytest.raises(InvalidInputError, match="'priority' must be an integer"):
        schedule_parameters({"priority": "high"})


def test_decode_request_takes_the_sooner_deadline_and_strips_reserved_parameters():
    request = raw_request(("x", "FP32", [1], np.ones(1, np.float32).tobytes()))
    request.id = "req-7"
    request.parameters["timeout"].int64_param = 2_000_000
    request.parameters["priority"].uint64_param = 1  # tritonclient sends priority as uint64
    request.parameters["tenant"].string_param = "acme"
    request.outputs.add(name="y")
    before = time.monotonic()
    decoded = decode_request(request, grpc_time_left_s=0.5)
    assert before + 0.5 <= decoded.deadline_s <= time.monotonic() + 0.5
    assert decoded.priority == 1 and decoded.request_id == "req-7"
    assert decoded.parameters == {"tenant": "acme"}
    assert decoded.requested_outputs == ("y",)
    assert decode_request(request).deadline_s <= time.monotonic() + 2.0
    request.parameters["sequence_id"].int64_param = 4
    with pytest.raises(InvalidInputError, match="sequence batching"):
        decode_request(request)


def test_responses_are_always_raw_with_the_right_datatypes():
    request = InferenceRequest(model_name="m", model_version="", request_id="r1", inputs={})
    result = InferenceResult(
        outputs={
            "probs": np.array([[0.25, 0.75]], dtype=np.float32),
            "label": np.array(["refund"], dtype=object),
            "ok": np.array([True]),
            "half": np.array([1.5], dtype=np.float16),
        },
        model_version="3",
        parameters={"served_by": "edge", "cached": False, "queue_ms": 4, "confidence": 0.75},
    )
    response = encode_response(request, result)
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("probs", "FP32", [1, 2]),
        ("label", "BYTES", [1]),
        ("ok", "BOOL", [1]),
        ("half", "FP16", [1]),
    ]
    assert not any(o.HasField("contents") for o in response.outputs)
    assert response.raw_output_contents[0] == np.array([0.25, 0.75], np.float32).tobytes()
    assert response.raw_output_contents[1] == encode_bytes_elements(["refund"])
    assert response.model_version == "3" and response.id == "r1"
    assert response.parameters["served_by"].string_param == "edge"
    assert response.parameters["queue_ms"].int64_param == 4
    assert response.parameters["confidence"].double_param == 0.75
    only = InferenceRequest(model_name="m", model_version="", request_id="", inputs={}, requested_outputs=("label",))
    assert [o.name for o in encode_response(only, result).outputs] == ["label"]


def test_datatype_for_dtype():
    assert datatype_for_dtype("float32") == "FP32"
    assert datatype_for_dtype(np.int64) == "INT64"
    assert datatype_for_dtype(np.dtype("U5")) == "BYTES"
    with pytest.raises(ValueError, match="complex64"):
        datatype_for_dtype(np.complex64)


def _fields(message):
    return {
        f.name: (f.number, f.type, f.message_type.name if f.message_type else None, f.containing_oneof and f.containing_oneof.name)
        for f in message.fields
    }


def test_our_proto_matches_the_one_tritonclient_ships_on_the_wire():
    triton = pytest.importorskip("tritonclient.grpc.service_pb2")
    ours_service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs_service = triton.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert ours_service.full_name == theirs_service.full_name == "inference.GRPCInferenceService"
    for method in ours_service.methods:
        theirs = theirs_service.methods_by_name[method.name]
        assert (method.input_type.full_name, method.output_type.full_name) == (
            theirs.input_type.full_name,
            theirs.output_type.full_name,
        )
        assert (method.client_streaming, method.server_streaming) == (theirs.client_streaming, theirs.server_streaming)

    def compare(ours, theirs):
        assert _fields(ours) == _fields(theirs), ours.full_name
        for nested in ours.nested_types:
            compare(nested, theirs.nested_types_by_name[nested.name])

    for name, message in pb.DESCRIPTOR.message_types_by_name.items():
        compare(message, triton.DESCRIPTOR.message_types_by_name[name])
