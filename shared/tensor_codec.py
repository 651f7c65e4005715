"""numpy <-> `edgecascade.v1.Tensor`: raw little-endian bytes with dtype and shape, checked."""

from __future__ import annotations

import math

import numpy as np

from protos import edgecascade_pb2 as pb
from shared.errors import InvalidInputError

#: dtypes a Tensor may carry. Anything else is refused before it reaches a model.
ALLOWED_DTYPES = frozenset(
    {"float16", "float32", "float64", "int8", "uint8", "int16", "int32", "int64", "bool"}
)
#: Largest element count or dimension we accept; beyond this a shape is nonsense, not data.
MAX_ELEMENTS = 1 << 31


def to_proto(array: np.ndarray) -> pb.Tensor:
    """Encode an array as a Tensor message (one copy, into the bytes field)."""
    array = np.asarray(array)
    if array.dtype.name not in ALLOWED_DTYPES:
        raise InvalidInputError(f"dtype {array.dtype.name!r} is not supported; use one of {sorted(ALLOWED_DTYPES)}")
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return pb.Tensor(dtype=array.dtype.name, shape=list(array.shape), data=np.ascontiguousarray(little).tobytes())


def from_proto(tensor: pb.Tensor) -> np.ndarray:
    """Decode a Tensor message, refusing unknown dtypes, bad shapes and wrong byte lengths."""
    if tensor.dtype not in ALLOWED_DTYPES:
        raise InvalidInputError(
            f"tensor dtype {tensor.dtype!r} is not supported; use one of {sorted(ALLOWED_DTYPES)}"
        )
    shape = tuple(int(d) for d in tensor.shape)
    if any(d < 0 or d > MAX_ELEMENTS for d in shape):
        raise InvalidInputError(f"tensor shape {list(shape)} has a negative or absurd dimension")
    count = math.prod(shape)
    if count == 0:
        raise InvalidInputError(f"tensor is empty (shape {list(shape)})")
    dtype = np.dtype(tensor.dtype).newbyteorder("<")
    expected = count * dtype.itemsize
    if len(tensor.data) != expected:
        raise InvalidInputError(
            f"tensor data is {len(tensor.data)} bytes but shape {list(shape)} of {tensor.dtype} needs {expected}"
        )
    return np.frombuffer(tensor.data, dtype=dtype).reshape(shape)
