"""numpy <-> `edgecascade.v1.Tensor`: raw little-endian bytes with dtype and shape, checked."""

from __future__ import annotations

import math

import numpy as np

from protos import edgecascade_pb2 as pb
from shared.errors import InvalidInputError, echoed

#: dtypes a Tensor may carry. Anything else is refused before it reaches a model.
ALLOWED_DTYPES = frozenset(
    {"float16", "float32", "float64", "int8", "uint8", "int16", "int32", "int64", "bool"}
)
#: Largest element count or dimension we accept; beyond this a shape is nonsense, not data.
MAX_ELEMENTS = 1 << 31


#: Little-endian dtype -> its name, and back: one dict lookup per tensor on the hot path.
_NAME_OF_DTYPE = {np.dtype(name).newbyteorder("<"): name for name in ALLOWED_DTYPES}
_DTYPE_OF_NAME = {name: dtype for dtype, name in _NAME_OF_DTYPE.items()}


def to_proto(array: np.ndarray) -> pb.Tensor:
    """Encode an array as a Tensor message (one copy, into the bytes field)."""
    array = np.asarray(array)
    name = _NAME_OF_DTYPE.get(array.dtype)
    if name is None:  # big-endian, or not a tensor dtype at all
        if array.dtype.name not in ALLOWED_DTYPES:
            raise InvalidInputError(f"dtype {array.dtype.name!r} is not supported; use one of {sorted(ALLOWED_DTYPES)}")
        name = array.dtype.name
        array = array.astype(array.dtype.newbyteorder("<"))
    return pb.Tensor(dtype=name, shape=array.shape, data=array.tobytes())  # tobytes: C order, any layout


def from_proto(tensor: pb.Tensor) -> np.ndarray:
    """Decode a Tensor message, refusing unknown dtypes, bad shapes and wrong byte lengths."""
    dtype = _DTYPE_OF_NAME.get(tensor.dtype)
    if dtype is None:
        raise InvalidInputError(
            f"tensor dtype {echoed(tensor.dtype)} is not supported; use one of {sorted(ALLOWED_DTYPES)}"
        )
    shape = tuple(tensor.shape)
    if shape and (min(shape) < 0 or max(shape) > MAX_ELEMENTS):
        raise InvalidInputError(f"tensor shape {list(shape)} has a negative or absurd dimension")
    count = math.prod(shape)
    if count == 0:
        raise InvalidInputError(f"tensor is empty (shape {list(shape)})")
    expected = count * dtype.itemsize
    data = tensor.data
    if len(data) != expected:
        raise InvalidInputError(
            f"tensor data is {len(data)} bytes but shape {list(shape)} of {tensor.dtype} needs {expected}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)
