"""What a daemon implements to serve the KServe v2 Open Inference Protocol.

Free of gRPC and protobuf: `shared.kserve_service.KServeServicer` converts the wire messages
to and from these types and calls a `KServeBackend`. The edge agent and the cloud router
each implement the backend over their own models.

Tensors are numpy arrays in both directions. A BYTES tensor arrives as an object array of
`str` (UTF-8 decoded) with the request's shape; a backend may answer a BYTES output with an
object, `str_` or `bytes_` array.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol, Union, runtime_checkable

import numpy as np

#: A request or response parameter value, as the protocol allows.
ParameterValue = Union[bool, int, float, str]


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model, as ModelMetadata reports it."""

    name: str
    datatype: str  # KServe datatype: "FP32", "INT64", "BYTES", ...
    shape: tuple[int, ...]  # -1 marks a dimension of any size (usually the batch)


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    versions: tuple[str, ...] = ()
    platform: str = ""  # "<project>_<format>", e.g. "onnx_onnxv1", "pytorch_torchscript"


@dataclass(frozen=True)
class ServerMetadata:
    name: str
    version: str
    extensions: tuple[str, ...] = ()


@dataclass(frozen=True)
class InferenceRequest:
    """One decoded ModelInfer request, checked against the protocol (not against the model)."""

    model_name: str
    model_version: str  # "" lets the server choose
    request_id: str  # "" when the client gave none
    inputs: dict[str, np.ndarray]  # by input name, in request order
    requested_outputs: tuple[str, ...] = ()  # empty: every output
    deadline_s: float | None = None  # time.monotonic() by which the answer is due; None: no limit
    priority: int = 0  # 0: default; 1 is the highest, larger numbers are lower
    parameters: dict[str, ParameterValue] = field(default_factory=dict)  # all but timeout/priority

    def time_left_s(self) -> float | None:
        """Seconds until the deadline (negative once passed), or None without one."""
        return None if self.deadline_s is None else self.deadline_s - time.monotonic()


@dataclass(frozen=True)
class InferenceResult:
    outputs: dict[str, np.ndarray]  # by output name; all outputs, or at least the requested ones
    model_version: str = ""  # the version that answered; "" echoes the request's
    parameters: dict[str, ParameterValue] = field(default_factory=dict)  # e.g. {"served_by": "edge"}


@runtime_checkable
class KServeBackend(Protocol):
    """The daemon side of GRPCInferenceService. Raise only `shared.errors` types.

    The health and metadata calls are synchronous and must be cheap (read cached state).
    """

    def server_live(self) -> bool:
        """The process is up and can answer health, metadata and inference calls."""

    def server_ready(self) -> bool:
        """The server can run inference now (its models are loaded)."""

    def model_ready(self, name: str, version: str) -> bool:
        """This model (version "" = the server's choice) can run inference; False if unknown."""

    def server_metadata(self) -> ServerMetadata: ...

    def model_metadata(self, name: str, version: str) -> ModelMetadata:
        """Raise ModelNotFoundError for a model (or version) this server does not host."""

    async def infer(self, request: InferenceRequest) -> InferenceResult:
        """Run the request. Raise ModelNotFoundError for an unknown model, UnavailableError
        while not ready, InvalidInputError for inputs the model cannot take, DeadlineError
        or OverloadedError as they apply."""
