"""The edge agent's channel to the cloud router: deadline, breaker, typed failures. The channel
follows its TLS and token files (shared/rotating_channel.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import Optional

import grpc

from edge_agent.breaker import CircuitBreaker
from protos import edgecascade_pb2 as pb
from protos import edgecascade_pb2_grpc as pb_grpc
from shared.errors import ERROR_CLASS_KEY, CloudBudgetError, RateLimitedError
from shared.grpc_options import channel_options
from shared.model import ModelInput
from shared.proto_convert import infer_request
from shared.request_parsing import AGENT_ID_KEY
from shared.rotating_channel import RotatingChannel
from shared.tls import ClientSecurity

log = logging.getLogger(__name__)

#: Cloud answers that say the cloud (not the request) is in trouble: they count against the breaker.
CLOUD_FAULT_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
}


class CloudUnavailable(Exception):
    """The cloud gave no usable answer; `reason` says why (for `fallback_reason`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CloudLink:
    def __init__(self, target: str, *, model: str = "", breaker: CircuitBreaker, max_message_bytes: int,
                 agent_id: str = "", security: Optional[ClientSecurity] = None) -> None:
        self.target = target
        self.model = model
        self.breaker = breaker
        self.agent_id = agent_id
        self._metadata = ((AGENT_ID_KEY, agent_id),) if agent_id else None
        self._channel = RotatingChannel(target, security, stub_of=pb_grpc.CloudRouterStub, what="cloud link",
                                        options=channel_options(max_message_bytes, fail_fast=True))

    async def close(self) -> None:
        await self._channel.close()

    async def infer(self, payload: ModelInput, *, timeout_s: float, request_id: str, priority: int = 0) -> pb.InferResponse:
        """The cloud's answer within `timeout_s`, or CloudUnavailable with the reason.

        Every way the call ends settles the breaker: an answer or a request error as a success,
        a cloud fault or a timeout as a failure, and a cancel by the caller (or anything else
        unexpected) as abandoned, which frees a half-open trial for the next call."""
        if timeout_s <= 0:  # no time left to ask: not the cloud's fault, the breaker is not touched
            raise CloudUnavailable("deadline")
        request = infer_request(payload, model=self.model, request_id=request_id, priority=priority, timeout_ms=timeout_s * 1000.0)
        if not self.breaker.allow():
            raise CloudUnavailable("breaker_open")
        call = self._channel.stub().Infer(request, timeout=timeout_s, metadata=self._metadata)
        settle = self.breaker.record_abandoned
        try:
            # The event loop's timer ends the wait on time. gRPC's own deadline fired 10-13 ms
            # late on a 2-core VM, close to the 15 ms fallback reserve, and the caller's own
            # deadline passed before the edge answer reached it.
            response = await asyncio.wait_for(call, timeout_s)
            settle = self.breaker.record_success
            return response
        except asyncio.TimeoutError:
            settle = self.breaker.record_failure
            log.debug("cloud call gave no answer within %.3f s", timeout_s)
            raise CloudUnavailable("deadline") from None
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            error_class = _error_class(exc)
            if error_class in (CloudBudgetError.__name__, RateLimitedError.__name__):  # our share, not a sick cloud
                settle = self.breaker.record_success
                raise CloudUnavailable("cloud_budget" if error_class == CloudBudgetError.__name__
                                       else "cloud_rate_limited") from None
            settle = self.breaker.record_failure if code in CLOUD_FAULT_CODES else self.breaker.record_success
            log.debug("cloud call failed: %s %s", code.name, exc.details())
            raise CloudUnavailable(_reason_of(code)) from None
        finally:
            call.cancel()  # a no-op once the call has ended; stops it when the wait was cancelled
            settle()

    async def heartbeat(self, request: pb.HeartbeatRequest, *, timeout_s: float) -> pb.HeartbeatResponse:
        """One heartbeat; gRPC errors propagate (the breaker is for inference calls only)."""
        return await self._channel.stub().Heartbeat(request, timeout=timeout_s)


def _error_class(exc: grpc.aio.AioRpcError) -> str:
    for key, value in exc.trailing_metadata() or ():
        if key == ERROR_CLASS_KEY:
            return value if isinstance(value, str) else value.decode()
    return ""


def _reason_of(code: grpc.StatusCode) -> str:
    return {
        grpc.StatusCode.DEADLINE_EXCEEDED: "deadline",
        grpc.StatusCode.UNAVAILABLE: "cloud_unavailable",
        grpc.StatusCode.RESOURCE_EXHAUSTED: "cloud_overloaded",
    }.get(code, f"cloud_error_{code.name.lower()}")
