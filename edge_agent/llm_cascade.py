"""The cascade for text generation on the edge agent.

The edge LM generates and streams its tokens (source EDGE) while the policy watches the running
signal. If the signal falls below the threshold, the edge stops at once and defers: the prompt
goes to the cloud LM, a `restart` chunk tells the caller to drop the edge's text, and the cloud's
tokens stream through (source CLOUD). If the cloud cannot be used before its first token (breaker
open, unavailable, out of time), the edge finishes the answer itself (EDGE_FALLBACK), continuing
exactly where its streamed text stopped (decoding is deterministic for a given request and seed).
The last chunk carries the summary: route, signals, token counts, and a status line.

It relays the cloud's protocol chunks as they are, so it speaks GenerateChunk on both sides.
"""

from __future__ import annotations

import time
from typing import AsyncIterator, Optional

from edge_agent.cloud_link import CloudUnavailable
from edge_agent.llm_cloud_link import LLMCloudLink
from edge_agent.llm_runtime import OnnxCausalLM
from protos import edgecascade_pb2 as pb
from shared.errors import DeadlineError
from shared.llm_policy import LLMPolicy
from shared.llm_proto import generation_budget_s, signals_message, status_of
from shared.llm_request import FINISH_CANCELLED, FINISH_DEADLINE, FINISH_DEFERRED, GenerationRequest, GenerationResult


class LLMCascade:
    def __init__(self, model: OnnxCausalLM, policy: Optional[LLMPolicy], cloud: Optional[LLMCloudLink]) -> None:
        self.model = model
        self.policy = policy
        self.cloud = cloud
        self.route_counts = {"edge": 0, "cloud": 0, "edge_fallback": 0}

    async def close(self) -> None:
        if self.cloud is not None:
            await self.cloud.close()
        self.model.close()

    def _defers(self, result: GenerationResult) -> bool:
        if self.policy is None or self.cloud is None:
            return False
        if result.finish_reason == FINISH_DEFERRED:
            return True
        return result.finish_reason not in (FINISH_DEADLINE, FINISH_CANCELLED) and not self.policy.accepts_final(result.signals)

    async def stream(self, request: GenerationRequest, *, deadline_s: float, request_id: str) -> AsyncIterator[pb.GenerateChunk]:
        """Chunks as produced; the last one holds the summary. `deadline_s` is on the monotonic clock (`shared.deadlines`)."""
        budget_s = generation_budget_s(deadline_s - time.monotonic())
        if budget_s <= 0:
            raise DeadlineError("deadline passed before generation started")
        should_defer = self.policy.should_defer if (self.policy is not None and self.cloud is not None) else None
        started = time.perf_counter()
        edge_result: Optional[GenerationResult] = None
        async for event in self.model.stream(request, budget_s, should_defer):
            if isinstance(event, GenerationResult):
                edge_result = event
            else:
                yield _chunk(event, pb.EDGE)
        edge_ms = (time.perf_counter() - started) * 1000.0
        summary = pb.GenerateSummary(request_id=request_id, model_name=self.model.name,
                                     prompt_tokens=edge_result.prompt_tokens, edge_tokens=len(edge_result.token_ids),
                                     edge_ms=edge_ms)
        summary.edge_signals.CopyFrom(signals_message(edge_result.signals))
        if not self._defers(edge_result):
            self.route_counts["edge"] += 1
            summary.served_by, summary.finish_reason = pb.EDGE, edge_result.finish_reason
            summary.status = status_of(edge_result.finish_reason, len(edge_result.token_ids))
            yield pb.GenerateChunk(source=pb.EDGE, summary=summary)
            return
        summary.defer_reason = "low_confidence"
        cloud_started, cloud_tokens, restarted = time.perf_counter(), 0, False
        try:
            async for chunk in self.cloud.stream(request, timeout_s=deadline_s - time.monotonic(), request_id=request_id):
                if chunk.HasField("summary"):
                    summary.finish_reason, summary.status = chunk.summary.finish_reason, chunk.summary.status
                    cloud_tokens = max(cloud_tokens, chunk.summary.cloud_tokens)
                    break
                if not restarted:
                    restarted = True
                    yield pb.GenerateChunk(source=pb.CLOUD, restart=True)
                cloud_tokens += len(chunk.token_ids)
                yield chunk
        except CloudUnavailable as exc:
            if restarted:  # the caller already holds cloud text: say how far it got
                summary.finish_reason = "error"
                summary.status = f"the cloud failed after {cloud_tokens} tokens ({exc.reason}); the text is what it sent"
            else:
                summary.fallback_reason = exc.reason
                async for chunk in self._finish_on_edge(request, edge_result.text, deadline_s, summary):
                    yield chunk
                self.route_counts["edge_fallback"] += 1
                summary.served_by, summary.edge_ms = pb.EDGE_FALLBACK, (time.perf_counter() - started) * 1000.0
                yield pb.GenerateChunk(source=pb.EDGE, summary=summary)
                return
        self.route_counts["cloud"] += 1
        summary.served_by, summary.cloud_tokens = pb.CLOUD, cloud_tokens
        summary.cloud_ms = (time.perf_counter() - cloud_started) * 1000.0
        yield pb.GenerateChunk(source=pb.CLOUD, summary=summary)

    async def _finish_on_edge(self, request: GenerationRequest, sent_text: str, deadline_s: float,
                              summary: pb.GenerateSummary) -> AsyncIterator[pb.GenerateChunk]:
        """Generate the whole answer again on the edge without deferral, streaming only what goes
        beyond the text the caller already has."""
        budget_s = generation_budget_s(deadline_s - time.monotonic())
        if budget_s <= 0:
            summary.finish_reason = FINISH_DEADLINE
            summary.status = status_of(FINISH_DEADLINE, summary.edge_tokens)
            return
        produced = ""
        async for event in self.model.stream(request, budget_s, None):
            if isinstance(event, GenerationResult):
                summary.finish_reason = event.finish_reason
                summary.edge_tokens = len(event.token_ids)
                summary.status = status_of(event.finish_reason, len(event.token_ids))
                return
            before, produced = len(produced), produced + event.text
            if len(produced) > len(sent_text):
                yield pb.GenerateChunk(text=produced[max(before, len(sent_text)):], source=pb.EDGE,
                                       token_ids=[] if event.token_id is None else [event.token_id])


def _chunk(event, source: int) -> pb.GenerateChunk:
    return pb.GenerateChunk(text=event.text, token_ids=[] if event.token_id is None else [event.token_id], source=source)


def build_llm_cascade(settings, breaker) -> Optional[LLMCascade]:
    """The agent's generation cascade from its settings (None without `llm_dir`). `breaker` is
    the classifier link's circuit breaker, shared, or the LM link's own on an agent without a
    classifier; None when there is no cloud."""
    if settings.llm_dir is None:
        return None
    from shared.llm_policy import load_llm_policy

    model = OnnxCausalLM(settings.llm_dir, providers=settings.providers, max_concurrent=settings.llm_max_concurrent)
    model.load()
    policy = load_llm_policy(settings.llm_dir)
    cloud = None
    if settings.cloud_target and breaker is not None:
        cloud = LLMCloudLink(settings.cloud_target, model=settings.llm_cloud_model, breaker=breaker,
                             max_message_bytes=settings.max_message_bytes, agent_id=settings.agent_id,
                             security=settings.cloud_security(settings.plaintext))
    return LLMCascade(model, policy, cloud)
