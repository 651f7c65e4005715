"""KServe v2 wire messages <-> numpy, with every protocol check a request can fail.

Inputs come either all in `raw_input_contents` or all as typed `contents`, never both.
Responses always carry `raw_output_contents`. BYTES elements travel as a 4-byte
little-endian length followed by the bytes, back to back.
"""

from __future__ import annotations

import math
import struct
import time
from typing import Iterable, Mapping

import numpy as np

from protos import grpc_service_pb2 as pb
from shared.errors import InvalidInputError, ModelError, echoed
from shared.kserve_backend import InferenceRequest, InferenceResult, ModelMetadata, ParameterValue, ServerMetadata

#: KServe datatype -> numpy dtype (little endian). BYTES elements are Python objects.
DTYPE_BY_DATATYPE: dict[str, np.dtype] = {
    "BOOL": np.dtype("bool"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype("object"),
}
_DATATYPE_BY_DTYPE_NAME = {dtype.name: datatype for datatype, dtype in DTYPE_BY_DATATYPE.items()}

#: The InferTensorContents field that carries each datatype. FP16 has none: it must be raw.
CONTENTS_FIELD_BY_DATATYPE: dict[str, str] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_CONTENTS_FIELDS = sorted(set(CONTENTS_FIELD_BY_DATATYPE.values()))

#: Largest element count we accept in one tensor; beyond this a shape is nonsense, not data.
MAX_ELEMENTS = 1 << 31
#: Request parameters with a protocol meaning that this codec reads itself.
TIMEOUT_PARAMETER = "timeout"  # microseconds; 0 means no timeout (Triton's convention)
PRIORITY_PARAMETER = "priority"  # 0 means default; 1 is the highest priority
#: Request parameters for features we do not offer; refused rather than silently ignored.
_UNSUPPORTED_REQUEST_PARAMETERS = {
    "sequence_id": "sequence batching",
    "sequence_start": "sequence batching",
    "sequence_end": "sequence batching",
}
_UNSUPPORTED_TENSOR_PARAMETERS = {
    "shared_memory_region": "shared-memory tensors",
    "classification": "classification outputs",
}
_LENGTH_PREFIX = struct.Struct("<I")


# --- datatypes ------------------------------------------------------------------------------


def dtype_for_datatype(datatype: str) -> np.dtype:
    """The numpy dtype of a KServe datatype; InvalidInputError for an unknown one."""
    try:
        return DTYPE_BY_DATATYPE[datatype]
    except KeyError:
        raise InvalidInputError(
            f"datatype {datatype!r} is not supported; use one of {sorted(DTYPE_BY_DATATYPE)}"
        ) from None


def datatype_for_dtype(dtype: np.dtype | str | type) -> str:
    """The KServe datatype of a numpy dtype ("float32" -> "FP32"); text and objects are BYTES."""
    dtype = np.dtype(dtype)
    if dtype.kind in "OUS":
        return "BYTES"
    try:
        return _DATATYPE_BY_DTYPE_NAME[dtype.name]
    except KeyError:
        raise ValueError(f"numpy dtype {dtype.name!r} has no KServe datatype") from None


# --- BYTES elements -------------------------------------------------------------------------


def encode_bytes_elements(values: Iterable[bytes | str | np.bytes_ | np.str_]) -> bytes:
    """Length-prefixed concatenation of BYTES elements; `str` is encoded as UTF-8."""
    parts: list[bytes] = []
    for value in values:
        data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        parts.append(_LENGTH_PREFIX.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def decode_bytes_elements(raw: bytes, count: int, what: str) -> list[bytes]:
    """Split length-prefixed BYTES content into exactly `count` elements, or say what is wrong."""
    if count * _LENGTH_PREFIX.size > len(raw):
        raise InvalidInputError(
            f"{what} holds {len(raw)} bytes, too few for {count} BYTES elements (each needs a 4-byte length)"
        )
    elements: list[bytes] = []
    offset = 0
    view = memoryview(raw)
    for index in range(count):
        if offset + _LENGTH_PREFIX.size > len(raw):
            raise InvalidInputError(f"{what} ends inside the length of BYTES element {index} of {count}")
        (length,) = _LENGTH_PREFIX.unpack_from(raw, offset)
        offset += _LENGTH_PREFIX.size
        if offset + length > len(raw):
            raise InvalidInputError(
                f"{what}: BYTES element {index} claims {length} bytes but only {len(raw) - offset} remain"
            )
        elements.append(bytes(view[offset : offset + length]))
        offset += length
    if offset != len(raw):
        raise InvalidInputError(f"{what} has {len(raw) - offset} bytes left over after {count} BYTES elements")
    return elements


def _texts(elements: list[bytes], shape: tuple[int, ...], what: str) -> np.ndarray:
    """BYTES elements as an object array of UTF-8 decoded `str` with the given shape."""
    array = np.empty(len(elements), dtype=object)
    for index, element in enumerate(elements):
        try:
            array[index] = element.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInputError(f"{what}: BYTES element {index} is not valid UTF-8 ({exc.reason})") from None
    return array.reshape(shape)


# --- parameters -----------------------------------------------------------------------------


def parameter_value(parameter: pb.InferParameter) -> ParameterValue | None:
    """The Python value of an InferParameter, or None when none of its choices is set."""
    choice = parameter.WhichOneof("parameter_choice")
    return None if choice is None else getattr(parameter, choice)


def read_parameters(parameters: Mapping[str, pb.InferParameter]) -> dict[str, ParameterValue]:
    """A parameter map as a plain dict (unset parameters are dropped)."""
    values = {name: parameter_value(parameter) for name, parameter in parameters.items()}
    return {name: value for name, value in values.items() if value is not None}


def write_parameters(target: Mapping[str, pb.InferParameter], values: Mapping[str, ParameterValue]) -> None:
    """Fill a parameter map from a plain dict of bool, int, float or str."""
    for name, value in values.items():
        parameter = target[name]  # type: ignore[index]  # map fields create entries on access
        if isinstance(value, (bool, np.bool_)):
            parameter.bool_param = bool(value)
        elif isinstance(value, (int, np.integer)):
            if int(value) > np.iinfo(np.int64).max:
                parameter.uint64_param = int(value)
            else:
                parameter.int64_param = int(value)
        elif isinstance(value, (float, np.floating)):
            parameter.double_param = float(value)
        elif isinstance(value, str):
            parameter.string_param = value
        else:
            raise ModelError(f"response parameter {name!r} has type {type(value).__name__}; use bool, int, float or str")


def _non_negative_int(values: Mapping[str, ParameterValue], name: str, unit: str) -> int:
    value = values.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"parameter {name!r} must be an integer ({unit}), got {type(value).__name__} {echoed(value)}")
    if value < 0:
        raise InvalidInputError(f"parameter {name!r} must not be negative ({unit}), got {value}")
    return value


def schedule_parameters(values: Mapping[str, ParameterValue]) -> tuple[float | None, int]:
    """(timeout_s or None, priority) from the reserved `timeout` (µs) and `priority` parameters."""
    timeout_us = _non_negative_int(values, TIMEOUT_PARAMETER, "microseconds, 0 = none")
    priority = _non_negative_int(values, PRIORITY_PARAMETER, "0 = default, 1 = highest")
    return (timeout_us / 1e6 if timeout_us > 0 else None), priority


def _refuse_unsupported(parameters: Mapping[str, pb.InferParameter], unsupported: dict[str, str], where: str) -> None:
    for name in parameters:
        if name in unsupported:
            raise InvalidInputError(f"{where} asks for {unsupported[name]} (parameter {echoed(name)}), which this server does not support")


# --- requests -------------------------------------------------------------------------------


def _shape(tensor: pb.ModelInferRequest.InferInputTensor, what: str) -> tuple[tuple[int, ...], int]:
    shape = tuple(int(d) for d in tensor.shape)
    if any(d < 0 for d in shape):
        raise InvalidInputError(f"{what} has shape {list(shape)}; a request needs concrete (non-negative) dimensions")
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        raise InvalidInputError(f"{what} has shape {list(shape)}: {count} elements is more than the {MAX_ELEMENTS} allowed")
    return shape, count


def _from_raw(raw: bytes, datatype: str, shape: tuple[int, ...], count: int, what: str) -> np.ndarray:
    if datatype == "BYTES":
        return _texts(decode_bytes_elements(raw, count, what), shape, what)
    dtype = DTYPE_BY_DATATYPE[datatype]
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInputError(
            f"{what} has {len(raw)} bytes of raw content but shape {list(shape)} of {datatype} needs {expected}"
        )
    if datatype == "BOOL":
        flags = np.frombuffer(raw, dtype=np.uint8)
        if flags.size and flags.max() > 1:
            raise InvalidInputError(f"{what} is BOOL but holds bytes other than 0 and 1")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _from_contents(
    contents: pb.InferTensorContents, datatype: str, shape: tuple[int, ...], count: int, what: str
) -> np.ndarray:
    field_name = CONTENTS_FIELD_BY_DATATYPE.get(datatype)
    if field_name is None:
        raise InvalidInputError(f"{what} is {datatype}, which has no typed contents field; send it in raw_input_contents")
    stray = [name for name in _CONTENTS_FIELDS if name != field_name and len(getattr(contents, name))]
    if stray:
        raise InvalidInputError(f"{what} is {datatype}, so its contents belong in {field_name}, not {', '.join(stray)}")
    values = getattr(contents, field_name)
    if len(values) != count:
        raise InvalidInputError(f"{what} has {len(values)} elements in {field_name} but shape {list(shape)} needs {count}")
    if datatype == "BYTES":
        return _texts(list(values), shape, what)
    dtype = DTYPE_BY_DATATYPE[datatype]
    if field_name in ("int_contents", "uint_contents") and dtype.itemsize < 4 and count:
        wide = np.asarray(values, dtype=np.int64)
        limits = np.iinfo(dtype)
        if wide.min() < limits.min or wide.max() > limits.max:
            raise InvalidInputError(
                f"{what} is {datatype} but {field_name} holds values outside [{limits.min}, {limits.max}]"
            )
    return np.asarray(values, dtype=dtype).reshape(shape)


def decode_inputs(request: pb.ModelInferRequest) -> dict[str, np.ndarray]:
    """The request's input tensors by name, checked for datatype, shape and byte length."""
    if not request.inputs:
        raise InvalidInputError("the request has no inputs")
    raw = request.raw_input_contents
    if raw:
        typed = [tensor.name for tensor in request.inputs if tensor.HasField("contents")]
        if typed:
            raise InvalidInputError(
                f"the request uses raw_input_contents, so no input may also carry typed contents (found on {typed})"
            )
        if len(raw) != len(request.inputs):
            raise InvalidInputError(
                f"raw_input_contents has {len(raw)} entries but the request has {len(request.inputs)} inputs; "
                "give one per input, in input order"
            )
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        what = f"input {echoed(tensor.name)}"
        if not tensor.name:
            raise InvalidInputError(f"input {index} has no name")
        if tensor.name in arrays:
            raise InvalidInputError(f"{what} appears more than once")
        _refuse_unsupported(tensor.parameters, _UNSUPPORTED_TENSOR_PARAMETERS, what)
        dtype_for_datatype(tensor.datatype)
        shape, count = _shape(tensor, what)
        if raw:
            arrays[tensor.name] = _from_raw(raw[index], tensor.datatype, shape, count, what)
        else:
            arrays[tensor.name] = _from_contents(tensor.contents, tensor.datatype, shape, count, what)
    return arrays


def decode_request(request: pb.ModelInferRequest, grpc_time_left_s: float | None = None) -> InferenceRequest:
    """A checked InferenceRequest. The deadline is the sooner of the gRPC deadline and `timeout`."""
    if not request.model_name:
        raise InvalidInputError("the request names no model (model_name is empty)")
    _refuse_unsupported(request.parameters, _UNSUPPORTED_REQUEST_PARAMETERS, "the request")
    parameters = read_parameters(request.parameters)
    timeout_s, priority = schedule_parameters(parameters)
    for name in (TIMEOUT_PARAMETER, PRIORITY_PARAMETER):
        parameters.pop(name, None)
    limits = [limit for limit in (timeout_s, grpc_time_left_s) if limit is not None]
    deadline_s = time.monotonic() + min(limits) if limits else None
    requested: list[str] = []
    for output in request.outputs:
        if not output.name:
            raise InvalidInputError("a requested output has no name")
        _refuse_unsupported(output.parameters, _UNSUPPORTED_TENSOR_PARAMETERS, f"requested output {output.name!r}")
        if output.name not in requested:
            requested.append(output.name)
    return InferenceRequest(
        model_name=request.model_name,
        model_version=request.model_version,
        request_id=request.id,
        inputs=decode_inputs(request),
        requested_outputs=tuple(requested),
        deadline_s=deadline_s,
        priority=priority,
        parameters=parameters,
    )


# --- responses ------------------------------------------------------------------------------


def _raw_output(name: str, value: np.ndarray) -> tuple[str, bytes]:
    array = np.asarray(value)
    if array.dtype.kind in "OUS":
        try:
            return "BYTES", encode_bytes_elements(array.ravel(order="C"))
        except TypeError:
            raise ModelError(f"output {name!r} is a BYTES tensor with elements that are neither str nor bytes") from None
    try:
        datatype = datatype_for_dtype(array.dtype)
    except ValueError as exc:
        raise ModelError(f"output {name!r}: {exc}") from None
    little = array.astype(DTYPE_BY_DATATYPE[datatype], copy=False)
    return datatype, np.ascontiguousarray(little).tobytes()


def encode_response(request: InferenceRequest, result: InferenceResult) -> pb.ModelInferResponse:
    """The ModelInferResponse for a result: requested outputs (or all), always raw."""
    names = list(request.requested_outputs) or list(result.outputs)
    missing = [name for name in names if name not in result.outputs]
    if missing:
        raise InvalidInputError(
            f"model {request.model_name!r} has no output named {missing}; it has {sorted(result.outputs)}"
        )
    response = pb.ModelInferResponse(
        model_name=request.model_name,
        model_version=result.model_version or request.model_version,
        id=request.request_id,
    )
    write_parameters(response.parameters, result.parameters)
    for name in names:
        value = np.asarray(result.outputs[name])
        datatype, raw = _raw_output(name, value)
        response.outputs.add(name=name, datatype=datatype, shape=list(value.shape))
        response.raw_output_contents.append(raw)
    return response


def model_metadata_response(metadata: ModelMetadata) -> pb.ModelMetadataResponse:
    def tensors(specs: Iterable) -> list[pb.ModelMetadataResponse.TensorMetadata]:
        return [
            pb.ModelMetadataResponse.TensorMetadata(name=spec.name, datatype=spec.datatype, shape=list(spec.shape))
            for spec in specs
        ]

    return pb.ModelMetadataResponse(
        name=metadata.name,
        versions=list(metadata.versions),
        platform=metadata.platform,
        inputs=tensors(metadata.inputs),
        outputs=tensors(metadata.outputs),
    )


def server_metadata_response(metadata: ServerMetadata) -> pb.ServerMetadataResponse:
    return pb.ServerMetadataResponse(
        name=metadata.name, version=metadata.version, extensions=list(metadata.extensions)
    )
