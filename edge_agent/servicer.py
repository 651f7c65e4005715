"""edgecascade.v1 EdgeAgent over gRPC: proto <-> internal types, nothing else."""

from __future__ import annotations

from typing import Optional

import grpc

from edge_agent.cascade import Cascade, classifier_cascade
from edge_agent.heartbeat import agent_status, lm_only_status
from edge_agent.llm_servicer import GenerateRpcs
from edge_agent.metrics import AgentMetrics
from edge_agent.settings import EdgeSettings
from protos import edgecascade_pb2 as pb
from protos import edgecascade_pb2_grpc as pb_grpc
from shared.errors import ModelNotFoundError, echoed
from shared.grpc_errors import grpc_errors
from shared.metrics import API_EDGECASCADE, counted
from shared.proto_convert import response_of
from shared.request_parsing import call_deadline_s, decode_input, request_id_of


class EdgeAgentServicer(GenerateRpcs, pb_grpc.EdgeAgentServicer):
    def __init__(self, cascade: Optional[Cascade], settings: EdgeSettings, metrics: AgentMetrics | None = None) -> None:
        self.cascade = cascade
        self.settings = settings
        self.metrics = metrics or AgentMetrics(cascade, settings.agent_id)

    def check_model(self, name: str) -> None:
        served = classifier_cascade(self.cascade).active.model.name
        if name and name != served:
            raise ModelNotFoundError(f"unknown model {echoed(name)}; this agent serves {served!r}")

    @grpc_errors
    @counted(API_EDGECASCADE)
    async def Infer(self, request: pb.InferRequest, context: grpc.aio.ServicerContext) -> pb.InferResponse:
        deadline_s = call_deadline_s(request, context, self.settings)
        request_id = request_id_of(request)
        self.check_model(request.model)
        cascade = classifier_cascade(self.cascade)
        result = await cascade.infer(decode_input(request), deadline_s=deadline_s, request_id=request_id, priority=request.priority)
        return response_of(
            result.prediction,
            request_id=request_id,
            route=result.route,
            signals=result.signals,
            edge_ms=result.edge_ms,
            cloud_ms=result.cloud_ms,
            defer_reason=result.defer_reason,
            fallback_reason=result.fallback_reason,
            abstain_reason=result.abstain_reason,
        )

    @grpc_errors
    async def GetStatus(self, request: pb.StatusRequest, context: grpc.aio.ServicerContext) -> pb.AgentStatus:
        if self.cascade is None:
            return lm_only_status(self.settings.agent_id, self.llm)
        return agent_status(self.cascade, self.settings.agent_id)
