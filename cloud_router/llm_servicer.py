"""CloudRouter.Generate: proto <-> the causal-LM hosts, nothing else. A mixin of the router's
servicer; `llm_hosts` maps model names to loaded `CausalLMHost`s (the first is the default)."""

from __future__ import annotations

import time
from typing import AsyncIterator

import grpc

from cloud_router.llm_host import CausalLMHost
from protos import edgecascade_pb2 as pb
from shared.errors import DeadlineError, ModelNotFoundError
from shared.grpc_errors import grpc_stream_errors
from shared.llm_proto import generation_budget_s, generation_request_of, status_of
from shared.llm_request import GenerationResult
from shared.request_parsing import call_deadline_s, request_id_of


class GenerateRpcs:
    llm_hosts: dict[str, CausalLMHost]
    llm_default_max_new_tokens: int = 256

    def llm_host(self, name: str) -> CausalLMHost:
        hosts = getattr(self, "llm_hosts", None) or {}
        if not hosts:
            raise ModelNotFoundError("this router hosts no language model (set llm_dirs)")
        if not name:
            return next(iter(hosts.values()))
        if name not in hosts:
            raise ModelNotFoundError(f"unknown language model {name!r}; this router hosts {sorted(hosts)}")
        return hosts[name]

    @grpc_stream_errors
    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.GenerateChunk]:
        settings = self.settings
        deadline_s = call_deadline_s(request, context, settings)
        request_id = request_id_of(request)
        host = self.llm_host(request.model)
        generation = generation_request_of(request, default_max_new_tokens=self.llm_default_max_new_tokens,
                                           max_new_tokens_limit=host.max_new_tokens_limit)
        budget_s = generation_budget_s(deadline_s - time.monotonic())
        if budget_s <= 0:
            raise DeadlineError("deadline passed before generation started")
        started = time.perf_counter()
        async for event in host.stream(generation, budget_s):
            if isinstance(event, GenerationResult):
                summary = pb.GenerateSummary(
                    request_id=request_id, served_by=pb.CLOUD, finish_reason=event.finish_reason,
                    status=status_of(event.finish_reason, len(event.token_ids)),
                    prompt_tokens=event.prompt_tokens, model_name=host.name,
                    cloud_tokens=len(event.token_ids) or event.signals.tokens,  # a remote engine sends no ids
                    cloud_ms=(time.perf_counter() - started) * 1000.0)
                yield pb.GenerateChunk(source=pb.CLOUD, summary=summary)
            else:
                yield pb.GenerateChunk(text=event.text, token_ids=[] if event.token_id is None else [event.token_id],
                                       source=pb.CLOUD)
