"""edgecascade.v1 CloudRouter over gRPC: proto <-> internal types, nothing else."""

from __future__ import annotations

import grpc

from cloud_router.llm_servicer import GenerateRpcs
from cloud_router.metrics import RouterMetrics
from cloud_router.router import Router
from cloud_router.settings import RouterSettings
from cloud_router.update_servicer import UpdateRpcs
from cloud_router.updates import UpdateBackend, UpdateService
from protos import edgecascade_pb2 as pb
from protos import edgecascade_pb2_grpc as pb_grpc
from shared.errors import InvalidInputError, UnavailableError
from shared.grpc_errors import grpc_errors
from shared.metrics import API_EDGECASCADE, counted
from shared.proto_convert import response_of
from shared.request_parsing import agent_id_of, call_deadline_s, decode_input, request_id_of


class CloudRouterServicer(UpdateRpcs, GenerateRpcs, pb_grpc.CloudRouterServicer):
    def __init__(self, router: Router, settings: RouterSettings, metrics: RouterMetrics | None = None,
                 updates: UpdateBackend | None = None) -> None:
        self.router = router
        self.settings = settings
        self.metrics = metrics or RouterMetrics(settings.router_id)
        self.updates = updates or UpdateService()

    @grpc_errors
    @counted(API_EDGECASCADE)
    async def Infer(self, request: pb.InferRequest, context: grpc.aio.ServicerContext) -> pb.InferResponse:
        deadline_s = call_deadline_s(request, context, self.settings)
        request_id = request_id_of(request)
        self.router.resolve(request.model)
        payload = decode_input(request)
        prediction, cloud_ms = await self.router.infer(request.model, payload, deadline_s, request.priority, request_id,
                                                       agent_id=agent_id_of(context.invocation_metadata()))
        return response_of(prediction, request_id=request_id, route="cloud", cloud_ms=cloud_ms)

    @grpc_errors
    async def GetStatus(self, request: pb.StatusRequest, context: grpc.aio.ServicerContext) -> pb.RouterStatus:
        name = self.router.default_model
        return pb.RouterStatus(
            router_id=self.router.router_id,
            models=sorted(self.router.models),
            queue_depth=sum(self.router.scheduler.queue_depth(m) for m in self.router.models),
            pressure=self.router.pressure(name),
        )

    @grpc_errors
    async def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext) -> pb.HeartbeatResponse:
        if not request.status.agent_id:
            raise InvalidInputError("heartbeat carries no agent_id")
        pressure, depth = await self.router.heartbeat(request.status, request.interval_s)
        budget = self.router.budget
        return pb.HeartbeatResponse(
            router_id=self.router.router_id,
            pressure=pressure,
            queue_depth=depth,
            budget_agent_rps=(budget.agent_rps or 0.0) if budget else 0.0,
            budget_fleet_rps=(budget.fleet_rps or 0.0) if budget else 0.0,
        )

    @grpc_errors
    async def GetFleet(self, request: pb.FleetRequest, context: grpc.aio.ServicerContext) -> pb.FleetStatus:
        try:
            entries = await self.router.fleet.entries()
        except Exception as exc:
            raise UnavailableError(f"fleet registry unavailable: {exc}") from None
        return pb.FleetStatus(agents=entries)
