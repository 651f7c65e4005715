"""The edge's streaming call to CloudRouter.Generate: the deferred prompt goes up, chunks come
back as the cloud produces them. Shares the classifier link's circuit breaker, so a sick cloud
is skipped by both (an agent without a classifier gives it one of its own); cancelling the
iteration cancels the call, and the cloud stops generating. The channel follows its TLS and
token files (shared/rotating_channel.py): a stream in progress ends on the channel it began on."""

from __future__ import annotations

import logging
from typing import AsyncIterator, Optional

import grpc

from edge_agent.breaker import CircuitBreaker
from edge_agent.cloud_link import CLOUD_FAULT_CODES, CloudUnavailable, _reason_of, channel_options
from protos import edgecascade_pb2 as pb
from protos import edgecascade_pb2_grpc as pb_grpc
from shared.llm_proto import generate_message_of
from shared.llm_request import GenerationRequest
from shared.request_parsing import AGENT_ID_KEY
from shared.rotating_channel import RotatingChannel
from shared.tls import ClientSecurity

log = logging.getLogger(__name__)


class LLMCloudLink:
    def __init__(self, target: str, *, model: str = "", breaker: CircuitBreaker, max_message_bytes: int,
                 agent_id: str = "", security: Optional[ClientSecurity] = None) -> None:
        self.model = model
        self.breaker = breaker
        self._metadata = ((AGENT_ID_KEY, agent_id),) if agent_id else None
        self._channel = RotatingChannel(target, security, stub_of=pb_grpc.CloudRouterStub, what="cloud LM link",
                                        options=channel_options(max_message_bytes))

    async def close(self) -> None:
        await self._channel.close()

    async def stream(self, request: GenerationRequest, *, timeout_s: float, request_id: str) -> AsyncIterator[pb.GenerateChunk]:
        """The cloud's chunks; CloudUnavailable (with the reason) when the cloud cannot be used.
        A failure after the first chunk also raises CloudUnavailable; the caller knows how far it got."""
        if timeout_s <= 0:
            raise CloudUnavailable("deadline")
        if not self.breaker.allow():
            raise CloudUnavailable("breaker_open")
        message = generate_message_of(request, model=self.model, request_id=request_id, timeout_s=timeout_s)
        call = self._channel.stub().Generate(message, timeout=timeout_s, metadata=self._metadata)
        try:
            async for chunk in call:
                yield chunk
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code in CLOUD_FAULT_CODES:
                self.breaker.record_failure()
            else:
                self.breaker.record_success()
            log.debug("cloud generation failed: %s %s", code.name, exc.details())
            raise CloudUnavailable(_reason_of(code)) from None
        finally:
            call.cancel()  # a no-op once the stream ended; stops the cloud when the caller left early
        self.breaker.record_success()
