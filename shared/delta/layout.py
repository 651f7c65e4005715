"""Where the tensors are inside a model file: byte spans of each tensor's raw data.

Diffing works on these spans and on the bytes between them (the "glue": headers, graph,
length prefixes). Spans are found without re-serialising anything, so the bytes outside
them are kept exactly and the patched file is byte-identical to the target.

Two layouts are known:
- safetensors: an 8-byte little-endian header length, a JSON header, then the data;
- ONNX: a protobuf ModelProto; each initializer's `raw_data` (or packed `float_data`,
  `double_data`) value inside `graph.initializer` is a span. Found with a small wire-format
  walker, so it needs no onnx import and reads nothing but the framing.
Anything else is opaque (no spans).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Literal, Optional

#: Spans smaller than this stay in the glue: a header entry costs more than it saves.
MIN_SPAN_BYTES = 256

Kind = Literal["float", "int8", "other"]


@dataclass(frozen=True)
class TensorSpan:
    """One tensor's raw bytes inside a file."""

    name: str
    kind: Kind
    """`float`: XOR-able floats; `int8`: 1-byte integers; `other`: anything else."""
    itemsize: int
    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True)
class Layout:
    format: Literal["safetensors", "onnx", "opaque"]
    spans: tuple[TensorSpan, ...]
    """Non-overlapping, sorted by offset, names unique."""


def detect_layout(data) -> Layout:
    """The layout of a file's bytes (a bytes-like or mmap); `opaque` when nothing fits."""
    for finder in (_safetensors_spans, _onnx_spans):
        found = finder(data)
        if found is not None:
            fmt, spans = found
            spans = tuple(s for s in sorted(spans, key=lambda s: s.offset) if s.length >= MIN_SPAN_BYTES)
            if _well_formed(spans, len(data)):
                return Layout(fmt, spans)
    return Layout("opaque", ())


def _well_formed(spans: tuple[TensorSpan, ...], size: int) -> bool:
    if not spans or len({s.name for s in spans}) != len(spans):
        return False
    end = 0
    for s in spans:
        if s.offset < end or s.end > size:
            return False
        end = s.end
    return True


# --- safetensors ---------------------------------------------------------------------------

_SAFETENSORS_KINDS: dict[str, tuple[Kind, int]] = {
    "F64": ("float", 8), "F32": ("float", 4), "F16": ("float", 2), "BF16": ("float", 2),
    "I8": ("int8", 1), "U8": ("int8", 1), "F8_E4M3": ("other", 1), "F8_E5M2": ("other", 1),
    "I16": ("other", 2), "U16": ("other", 2), "I32": ("other", 4), "U32": ("other", 4),
    "I64": ("other", 8), "U64": ("other", 8), "BOOL": ("other", 1),
}
_MAX_SAFETENSORS_HEADER = 100 << 20


def _safetensors_spans(data) -> Optional[tuple[str, list[TensorSpan]]]:
    if len(data) < 10:
        return None
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len < 2 or header_len > _MAX_SAFETENSORS_HEADER or 8 + header_len > len(data):
        return None
    if data[8:9] != b"{":
        return None
    try:
        header = json.loads(bytes(data[8 : 8 + header_len]))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(header, dict):
        return None
    base = 8 + header_len
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, stop = (int(v) for v in info["data_offsets"])
            kind, itemsize = _SAFETENSORS_KINDS.get(str(info["dtype"]), ("other", 1))
        except (KeyError, TypeError, ValueError):
            return None
        if not 0 <= start <= stop:
            return None
        spans.append(TensorSpan(str(name), kind, itemsize, base + start, stop - start))
    return "safetensors", spans


# --- ONNX (protobuf wire format) -------------------------------------------------------------

# TensorProto.DataType -> (kind, itemsize)
_ONNX_KINDS: dict[int, tuple[Kind, int]] = {
    1: ("float", 4), 10: ("float", 2), 11: ("float", 8), 16: ("float", 2),
    2: ("int8", 1), 3: ("int8", 1),
}
_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_TENSOR_DATA_TYPE, _TENSOR_FLOAT_DATA, _TENSOR_NAME, _TENSOR_RAW_DATA, _TENSOR_DOUBLE_DATA = 2, 4, 8, 9, 10


class _WireError(Exception):
    pass


def _varint(data, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _WireError("bad varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data, pos: int, end: int):
    """Yield (field_number, wire_type, value_start, value_end, varint_value) over one message."""
    while pos < end:
        key, pos = _varint(data, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise _WireError("field number 0")
        if wire == 0:
            value, pos = _varint(data, pos, end)
            yield field, wire, pos, pos, value
        elif wire == 1:
            pos += 8
            if pos > end:
                raise _WireError("truncated fixed64")
            yield field, wire, pos - 8, pos, 0
        elif wire == 2:
            length, pos = _varint(data, pos, end)
            if pos + length > end:
                raise _WireError("length past end")
            yield field, wire, pos, pos + length, 0
            pos += length
        elif wire == 5:
            pos += 4
            if pos > end:
                raise _WireError("truncated fixed32")
            yield field, wire, pos - 4, pos, 0
        else:
            raise _WireError(f"wire type {wire}")
    if pos != end:
        raise _WireError("message overruns its length")


def _onnx_spans(data) -> Optional[tuple[str, list[TensorSpan]]]:
    try:
        spans: list[TensorSpan] = []
        graphs = [(s, e) for f, w, s, e, _ in _fields(data, 0, len(data)) if f == _MODEL_GRAPH and w == 2]
        if len(graphs) != 1:
            return None
        g_start, g_end = graphs[0]
        for field, wire, start, end, _ in _fields(data, g_start, g_end):
            if field == _GRAPH_INITIALIZER and wire == 2:
                span = _initializer_span(data, start, end)
                if span is not None:
                    spans.append(span)
        return "onnx", spans
    except _WireError:
        return None


def _initializer_span(data, start: int, end: int) -> Optional[TensorSpan]:
    name, data_type, value = None, 0, None
    for field, wire, s, e, v in _fields(data, start, end):
        if field == _TENSOR_NAME and wire == 2:
            name = bytes(data[s:e]).decode("utf-8", errors="replace")
        elif field == _TENSOR_DATA_TYPE and wire == 0:
            data_type = v
        elif wire == 2 and field in (_TENSOR_RAW_DATA, _TENSOR_FLOAT_DATA, _TENSOR_DOUBLE_DATA):
            value = (field, s, e)
    if name is None or value is None:
        return None
    field, s, e = value
    if field == _TENSOR_FLOAT_DATA:
        kind, itemsize = "float", 4
    elif field == _TENSOR_DOUBLE_DATA:
        kind, itemsize = "float", 8
    else:
        kind, itemsize = _ONNX_KINDS.get(data_type, ("other", 1))
    if (e - s) % itemsize:
        kind, itemsize = "other", 1
    return TensorSpan(name, kind, itemsize, s, e - s)
