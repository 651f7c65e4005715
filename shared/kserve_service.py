"""The KServe v2 `inference.GRPCInferenceService` servicer (grpc.aio), thin over a backend.

It only converts messages (`shared.kserve_codec`) and calls a `KServeBackend`; errors map to
gRPC codes in `shared.grpc_errors`. Serve it next to the daemon's own API:

    add_kserve_servicer(server, backend)   # server: grpc.aio.Server

Stock clients work unchanged, e.g. `tritonclient.grpc.InferenceServerClient("host:port")`.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, AsyncIterator, ContextManager, Optional

import grpc

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from shared.errors import DeadlineError, EdgecascadeError, InvalidInputError, echoed
from shared.event_loop import within
from shared.grpc_errors import grpc_errors
from shared.kserve_backend import InferenceRequest, KServeBackend
from shared.kserve_codec import decode_request, encode_response, model_metadata_response, server_metadata_response

if TYPE_CHECKING:
    from shared.metrics import DaemonMetrics

log = logging.getLogger(__name__)

#: Full gRPC service name, e.g. for health checks and reflection.
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


class KServeServicer(pb_grpc.GRPCInferenceServiceServicer):
    """GRPCInferenceService over a `KServeBackend`; always answers with raw_output_contents."""

    def __init__(self, backend: KServeBackend, metrics: Optional["DaemonMetrics"] = None) -> None:
        self._backend = backend
        self._metrics = metrics

    @grpc_errors
    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=bool(self._backend.server_live()))

    @grpc_errors
    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=bool(self._backend.server_ready()))

    @grpc_errors
    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        _require_model_name(request.name)
        return pb.ModelReadyResponse(ready=bool(self._backend.model_ready(request.name, request.version)))

    @grpc_errors
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return server_metadata_response(self._backend.server_metadata())

    @grpc_errors
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        _require_model_name(request.name)
        return model_metadata_response(self._backend.model_metadata(request.name, request.version))

    @grpc_errors
    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        return await self._infer(request, context.time_remaining())

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Answers each request in turn; a failed one gets `error_message` and the stream goes on."""
        async for request in request_iterator:
            try:
                response = await self._infer(request, context.time_remaining())
            except EdgecascadeError as exc:
                yield pb.ModelStreamInferResponse(error_message=f"{exc.code.name}: {exc}")
                continue
            except Exception as exc:
                log.exception("unexpected error in ModelStreamInfer")
                yield pb.ModelStreamInferResponse(error_message=f"INTERNAL: internal error: {type(exc).__name__}: {exc}")
                continue
            yield pb.ModelStreamInferResponse(infer_response=response)

    def _refusals(self) -> ContextManager[None]:
        """Counts requests refused here, before the backend sees them (the backend counts the rest)."""
        return self._metrics.refusals("kserve") if self._metrics is not None else contextlib.nullcontext()

    async def _infer(self, message: pb.ModelInferRequest, grpc_time_left_s: float | None) -> pb.ModelInferResponse:
        with self._refusals():
            request = decode_request(message, grpc_time_left_s)
            if request.requested_outputs:
                self._check_requested_outputs(request)
            time_left_s = request.time_left_s()
            if time_left_s is not None and time_left_s <= 0:
                raise DeadlineError(f"request for model {echoed(request.model_name)} arrived with no time left")
        try:
            result = await within(self._backend.infer(request), time_left_s)
        except TimeoutError:
            raise DeadlineError(f"model {echoed(request.model_name)} did not answer within the request's deadline") from None
        return encode_response(request, result)

    def _check_requested_outputs(self, request: InferenceRequest) -> None:
        """Refuse unknown output names before any model runs (raises ModelNotFoundError too)."""
        metadata = self._backend.model_metadata(request.model_name, request.model_version)
        known = [spec.name for spec in metadata.outputs]
        unknown = [name for name in request.requested_outputs if name not in known]
        if unknown:
            raise InvalidInputError(f"model {request.model_name!r} has no output named {echoed(unknown)}; it has {known}")


def _require_model_name(name: str) -> None:
    if not name:
        raise InvalidInputError("the request names no model (name is empty)")


def add_kserve_servicer(
    server: grpc.aio.Server, backend: KServeBackend, metrics: Optional["DaemonMetrics"] = None
) -> KServeServicer:
    """Register GRPCInferenceService over `backend` on an aio server; returns the servicer.
    With `metrics`, requests refused before reaching the backend are counted there."""
    servicer = KServeServicer(backend, metrics)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    return servicer
