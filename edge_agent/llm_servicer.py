"""EdgeAgent.Generate: proto <-> the generation cascade, nothing else. A mixin of the agent's
servicer; `llm` is the LLMCascade, or None when the agent serves no language model."""

from __future__ import annotations

from typing import AsyncIterator, Optional

import grpc

from edge_agent.llm_cascade import LLMCascade
from protos import edgecascade_pb2 as pb
from shared.errors import ModelNotFoundError
from shared.grpc_errors import grpc_stream_errors
from shared.llm_proto import generation_request_of
from shared.request_parsing import call_deadline_s, request_id_of


class GenerateRpcs:
    llm: Optional[LLMCascade] = None
    llm_default_max_new_tokens: int = 256

    @grpc_stream_errors
    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.GenerateChunk]:
        settings = self.settings
        deadline_s = call_deadline_s(request, context, settings)
        request_id = request_id_of(request)
        if self.llm is None:
            raise ModelNotFoundError("this agent serves no language model (set llm_dir)")
        if request.model and request.model != self.llm.model.name:
            raise ModelNotFoundError(f"unknown language model {request.model!r}; this agent serves {self.llm.model.name!r}")
        generation = generation_request_of(request, default_max_new_tokens=self.llm_default_max_new_tokens,
                                           max_new_tokens_limit=self.llm.model.max_new_tokens_limit)
        async for chunk in self.llm.stream(generation, deadline_s=deadline_s, request_id=request_id):
            yield chunk
