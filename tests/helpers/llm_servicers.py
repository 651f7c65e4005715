"""The real Generate servicers of both daemons on bare gRPC servers, without the rest of a
daemon: what the language-model streaming tests put behind a port."""

from __future__ import annotations

from cloud_router.llm_servicer import GenerateRpcs as CloudGenerateRpcs
from cloud_router.settings import RouterSettings
from edge_agent.llm_servicer import GenerateRpcs as EdgeGenerateRpcs
from edge_agent.settings import EdgeSettings
from protos import edgecascade_pb2_grpc as pb_grpc


class CloudServicer(CloudGenerateRpcs, pb_grpc.CloudRouterServicer):
    def __init__(self, hosts):
        self.settings = RouterSettings()
        self.llm_hosts = hosts


class EdgeServicer(EdgeGenerateRpcs, pb_grpc.EdgeAgentServicer):
    def __init__(self, llm):
        self.settings = EdgeSettings(bundle_dir="unused", default_timeout_ms=30_000)
        self.llm = llm
