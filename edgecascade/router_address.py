"""Errors of command-line calls to a router, in words: above all, a `--router` that points at
an edge agent (its port answers, but not with the CloudRouter API)."""

from __future__ import annotations

from typing import Optional

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared.errors import ConfigError, EdgecascadeError, error_for_code
from shared.tls import ClientSecurity, open_channel

EDGE_AGENT_SERVICE = "edgecascade.v1.EdgeAgent"


def serves_edge_agent(target: str, security: Optional[ClientSecurity] = None, timeout_s: float = 2.0) -> bool:
    """Whether the gRPC server at `target` reports the EdgeAgent service healthy or known."""
    with open_channel(target, security) as channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=EDGE_AGENT_SERVICE),
                                                      timeout=timeout_s)
        except grpc.RpcError:
            return False
    return True


def router_call_error(code: grpc.StatusCode, details: str, target: str,
                      security: Optional[ClientSecurity] = None) -> EdgecascadeError:
    """The typed error for a failed call to the router at `target` (reached with `security`)."""
    if code == grpc.StatusCode.UNIMPLEMENTED and serves_edge_agent(target, security):
        return ConfigError(f"{target}: that address is an edge agent, not a router; "
                           "pass the cloud router's host:port (its `listen` setting)")
    if code == grpc.StatusCode.UNAVAILABLE:
        return error_for_code(code, f"router {target} is unreachable ({details or code.name})")
    return error_for_code(code, f"router {target}: {details or code.name}")
