"""Hypothesis strategies for fuzzing gRPC services from their proto descriptors.

- `wire_messages(descriptor)`: well-framed protobuf of the method's input type with random
  field values: unicode edge cases, NaN/Inf, extreme integers, unknown enum values, empty and
  huge repeated fields, nested messages.
- `wrong_wire_types(descriptor)`: the message's field numbers (and some others) with random
  wire types, so every field may arrive as the wrong type, plus invalid UTF-8 in strings.
- `random_bytes()`: anything at all.
- `tensor_requests()` / `kserve_requests()`: structurally valid inference requests with hostile
  dtypes, shapes (huge, negative, zero), byte lengths and NaN/Inf values.
"""

from __future__ import annotations

import struct

import numpy as np
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

from protos import edgecascade_pb2 as pb
from protos import grpc_service_pb2 as kserve_pb

EDGE_STRINGS = [
    "", " ", "\x00", "toy-edge\x00", "\u202etoy-edge", "\ufeff", "\U0010ffff", "é", "e\u0301", "🙂" * 64,
    "a" * 20_000, "../../etc/passwd", "%s%s%n", "line\nbreak\r", "toy-edge", "toy-cloud", "INPUT", "input",
    "ROUTE_CLOUD", "float32", "FP32", "BYTES", "\t" * 100, "null", "NaN", "-1",
]
EDGE_FLOATS = [float("nan"), float("inf"), float("-inf"), -0.0, 0.0, 1e308, -1e308, 5e-324, 1e-45, 3.4e38]
EDGE_INTS_64 = [0, -1, 1, 2**31 - 1, -2**31, 2**32, 2**40, 2**62, 2**63 - 1, -2**63]

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-2**31, 2**31 - 1), FieldDescriptor.TYPE_SINT32: (-2**31, 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-2**31, 2**31 - 1), FieldDescriptor.TYPE_INT64: (-2**63, 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-2**63, 2**63 - 1), FieldDescriptor.TYPE_SFIXED64: (-2**63, 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1), FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1), FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def strings() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(EDGE_STRINGS), st.text(max_size=40))


def _scalar(field: FieldDescriptor) -> st.SearchStrategy:
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        return strings()
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=256)
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        width = 32 if t == FieldDescriptor.TYPE_FLOAT else 64
        return st.one_of(st.sampled_from(EDGE_FLOATS if width == 64 else [f for f in EDGE_FLOATS if abs(f) < 3.5e38
                                                                            or f != f or abs(f) == float("inf")]),
                         st.floats(width=width))
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_ENUM:
        return st.integers(-3, 12)
    lo, hi = _INT_RANGES[t]
    return st.one_of(st.sampled_from([v for v in EDGE_INTS_64 if lo <= v <= hi]), st.integers(lo, hi))


def _field_value(field: FieldDescriptor, depth: int) -> st.SearchStrategy:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return message_objects(field.message_type, depth - 1) if depth > 0 else st.just(None)
    return _scalar(field)


def message_objects(descriptor: Descriptor, depth: int = 3) -> st.SearchStrategy:
    """Instances of `descriptor`'s class with random values in a random subset of its fields."""
    cls = GetMessageClass(descriptor)

    def build(values: dict) -> object:
        message = cls()
        for name, value in values.items():
            field = descriptor.fields_by_name[name]
            if value is None:
                continue
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                target = getattr(message, name)
                value_field = field.message_type.fields_by_name["value"]
                for k, v in value.items():
                    if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                        if v is not None:
                            target[k].CopyFrom(v)
                    else:
                        target[k] = v
            elif field.is_repeated:
                if field.type == FieldDescriptor.TYPE_MESSAGE:
                    getattr(message, name).extend([v for v in value if v is not None])
                else:
                    getattr(message, name).extend(value)
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                getattr(message, name).CopyFrom(value)
            else:
                setattr(message, name, value)
        return message

    parts = {}
    for field in descriptor.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field = field.message_type.fields_by_name["key"]
            value_field = field.message_type.fields_by_name["value"]
            strategy = st.dictionaries(_scalar(key_field), _field_value(value_field, depth), max_size=3)
        elif field.is_repeated:
            strategy = st.lists(_field_value(field, depth), max_size=5)
        else:
            strategy = _field_value(field, depth)
        parts[field.name] = strategy
    if not parts:
        return st.just(cls())
    return st.fixed_dictionaries({}, optional=parts).map(build)


def wire_messages(descriptor: Descriptor) -> st.SearchStrategy[bytes]:
    return message_objects(descriptor).map(lambda m: m.SerializeToString())


# ------------------------------------------------------------------------------ raw wire level


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


@st.composite
def _wire_field(draw, field_numbers: list[int]) -> bytes:
    number = draw(st.one_of(st.sampled_from(field_numbers), st.integers(1, 2**29 - 1)))
    wire_type = draw(st.sampled_from([0, 1, 2, 5, 3, 4, 6, 7]))  # 3/4 are groups, 6/7 invalid
    key = _varint(number << 3 | wire_type)
    if wire_type == 0:
        return key + _varint(draw(st.integers(0, 2**64 - 1)))
    if wire_type == 1:
        return key + struct.pack("<d", draw(st.sampled_from(EDGE_FLOATS)))
    if wire_type == 5:
        return key + draw(st.binary(min_size=4, max_size=4))
    if wire_type == 2:
        body = draw(st.one_of(st.binary(max_size=64), st.sampled_from([b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80",
                                                                      b"toy\x80edge", b"\xf4\x90\x80\x80"])))
        claimed = draw(st.one_of(st.just(len(body)), st.integers(0, 2**32)))  # lengths that lie, too
        return key + _varint(claimed) + body
    return key + draw(st.binary(max_size=8))


def wrong_wire_types(descriptor: Descriptor) -> st.SearchStrategy[bytes]:
    numbers = [f.number for f in descriptor.fields] or [1]
    return st.lists(_wire_field(numbers), min_size=1, max_size=6).map(b"".join)


def random_bytes() -> st.SearchStrategy[bytes]:
    return st.binary(max_size=512)


# ------------------------------------------------------------------------ hostile inference


DTYPES = ["float32", "float64", "float16", "int8", "uint8", "int64", "bool", "object", "complex64", "", "float32 ",
          "<f4", "V8", "str", "FP32"]
SHAPES = st.one_of(
    st.lists(st.integers(-3, 8), max_size=4),
    st.lists(st.sampled_from([0, 1, 3, 2**31, 2**40, 2**62, -1, -2**63]), min_size=1, max_size=4),
)
SPECIAL_VALUES = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e38, -1e38], dtype=np.float32)


@st.composite
def tensor_requests(draw, model: str = "") -> bytes:
    """edgecascade.v1 InferRequest bytes: valid framing, hostile tensors."""
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(SHAPES)
    if draw(st.booleans()):
        values = draw(st.lists(st.sampled_from(list(SPECIAL_VALUES)), min_size=1, max_size=12))
        data = np.array(values, dtype=np.float32).tobytes()
    else:
        data = draw(st.binary(max_size=128))
    request = pb.InferRequest(model=draw(st.sampled_from([model, "", "nope", "\x00", "a" * 5000])),
                              request_id=draw(strings()),
                              tensor=pb.Tensor(dtype=dtype, shape=shape, data=data),
                              priority=draw(st.integers(-2**31, 2**31 - 1)),
                              timeout_ms=draw(st.sampled_from([0.0, -1.0, 1e300, float("nan"), float("inf"), 500.0])))
    return request.SerializeToString()


@st.composite
def kserve_requests(draw, model: str) -> bytes:
    """KServe ModelInferRequest bytes: valid framing, hostile inputs and outputs."""
    inputs, raw = [], []
    for _ in range(draw(st.integers(0, 3))):
        tensor = kserve_pb.ModelInferRequest.InferInputTensor(
            name=draw(st.sampled_from(["input", "text", "", "other", "input\x00"])),
            datatype=draw(st.sampled_from(["FP32", "FP64", "FP16", "INT8", "UINT8", "INT64", "BOOL", "BYTES", "", "fp32",
                                           "BF16"])),
            shape=draw(SHAPES))
        if draw(st.booleans()):
            tensor.contents.fp32_contents.extend(draw(st.lists(st.sampled_from(list(SPECIAL_VALUES.astype(float))),
                                                               max_size=8)))
        if draw(st.booleans()):
            tensor.contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=32), max_size=3)))
        inputs.append(tensor)
        if draw(st.booleans()):
            raw.append(draw(st.one_of(st.binary(max_size=64), st.just(SPECIAL_VALUES.tobytes()))))
    request = kserve_pb.ModelInferRequest(
        model_name=draw(st.sampled_from([model, "", "nope", "a" * 5000, model + "\x00"])),
        model_version=draw(st.sampled_from(["", "1", "999", "-1", "x"])),
        id=draw(strings()), inputs=inputs, raw_input_contents=raw)
    for name in draw(st.lists(st.sampled_from(["label", "label_name", "probabilities", "served_by", "nope", ""]),
                              max_size=3)):
        request.outputs.add(name=name)
    if draw(st.booleans()):
        request.parameters["timeout_ms"].double_param = draw(st.sampled_from(EDGE_FLOATS))
    return request.SerializeToString()
