"""Streaming text generation in the SDK: `Client.generate` and `AsyncClient.generate` return a
stream of chunks; once it ends, `.summary` says who answered and how it ended, and `.text` holds
the answer (edge text withdrawn by a `restart` chunk is dropped).

    with Client("127.0.0.1:50061") as client:
        stream = client.generate("The capital of France is", max_new_tokens=32, timeout_s=10)
        for chunk in stream:
            print(chunk.text, end="", flush=True)     # chunk.restart: the cloud's answer replaces the edge's
        print(stream.summary.served_by, stream.summary.finish_reason, stream.summary.status)

A deadline that passes mid-stream ends the stream with what was produced and a summary whose
finish_reason is "deadline"; other failures raise the typed errors of `shared.errors`.
"""

from __future__ import annotations

import dataclasses
from typing import AsyncIterator, Iterator, Optional, Sequence, Union

import grpc

from protos import edgecascade_pb2 as pb
from shared.errors import InvalidInputError, error_for_code
from shared.proto_convert import ROUTE_FROM_PROTO

Prompt = Union[str, bytes]


@dataclasses.dataclass(frozen=True)
class GenerationChunk:
    text: str
    token_ids: list[int]
    source: str          # "edge" or "cloud"
    restart: bool        # drop the text received so far; the cloud's answer follows


@dataclasses.dataclass(frozen=True)
class GenerationSummary:
    request_id: str
    served_by: str       # edge, cloud or edge_fallback
    finish_reason: str   # eos, length, stop, deadline, cancelled, error
    status: str
    prompt_tokens: int = 0
    edge_tokens: int = 0
    cloud_tokens: int = 0
    min_top_prob: float = 0.0
    quantile_top_prob: float = 0.0
    defer_reason: str = ""
    fallback_reason: str = ""
    model_name: str = ""
    edge_ms: float = 0.0
    cloud_ms: float = 0.0

    @classmethod
    def from_proto(cls, s: pb.GenerateSummary) -> "GenerationSummary":
        return cls(request_id=s.request_id, served_by=ROUTE_FROM_PROTO.get(s.served_by, "unknown"),
                   finish_reason=s.finish_reason, status=s.status, prompt_tokens=s.prompt_tokens,
                   edge_tokens=s.edge_tokens, cloud_tokens=s.cloud_tokens,
                   min_top_prob=s.edge_signals.min_top_prob, quantile_top_prob=s.edge_signals.quantile_top_prob,
                   defer_reason=s.defer_reason, fallback_reason=s.fallback_reason, model_name=s.model_name,
                   edge_ms=s.edge_ms, cloud_ms=s.cloud_ms)


def generate_request(prompt: Prompt, *, model: str, request_id: str, max_new_tokens: int, temperature: float,
                     top_p: float, seed: Optional[int], stop: Sequence[str], timeout_s: float) -> pb.GenerateRequest:
    if timeout_s <= 0:
        raise InvalidInputError(f"timeout_s must be positive, got {timeout_s}")
    request = pb.GenerateRequest(model=model, request_id=request_id,
                                 prompt=prompt.encode("utf-8") if isinstance(prompt, str) else bytes(prompt),
                                 max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stop=list(stop),
                                 timeout_ms=timeout_s * 1000.0)
    if seed is not None:
        request.seed = seed
    return request


class _Assembly:
    """The chunk-by-chunk bookkeeping both stream classes share."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.text = ""
        self.summary: Optional[GenerationSummary] = None
        self.chunks = 0

    def take(self, message: pb.GenerateChunk) -> Optional[GenerationChunk]:
        if message.HasField("summary"):
            self.summary = GenerationSummary.from_proto(message.summary)
            return None
        if message.restart:
            self.text = ""
        self.text += message.text
        self.chunks += 1
        return GenerationChunk(text=message.text, token_ids=list(message.token_ids),
                               source=ROUTE_FROM_PROTO.get(message.source, "unknown"), restart=message.restart)

    def failed(self, exc: grpc.RpcError) -> None:
        """A deadline mid-stream ends the stream with a summary; anything else is raised typed."""
        if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and self.chunks:
            self.summary = GenerationSummary(request_id=self.request_id, served_by="unknown", finish_reason="deadline",
                                             status=f"the deadline passed mid-stream after {self.chunks} chunks; "
                                                    f"the text is what arrived by then")
            return
        raise error_for_code(exc.code(), exc.details() or exc.code().name) from None


class _Stream:
    """What both stream kinds share: the call, the text so far, the summary, cancel."""

    def __init__(self, call, request_id: str) -> None:
        self._call = call
        self._assembly = _Assembly(request_id)

    @property
    def text(self) -> str:
        return self._assembly.text

    @property
    def summary(self) -> Optional[GenerationSummary]:
        return self._assembly.summary

    def cancel(self) -> None:
        self._call.cancel()


class GenerationStream(_Stream):
    """Iterate for chunks (blocking); `cancel()` stops generation on every side."""

    def __iter__(self) -> Iterator[GenerationChunk]:
        try:
            for message in self._call:
                chunk = self._assembly.take(message)
                if chunk is not None:
                    yield chunk
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED:
                return
            self._assembly.failed(exc)


class AsyncGenerationStream(_Stream):
    """`async for` for chunks; `cancel()` stops generation on every side."""

    async def __aiter__(self) -> AsyncIterator[GenerationChunk]:
        try:
            async for message in self._call:
                chunk = self._assembly.take(message)
                if chunk is not None:
                    yield chunk
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED:
                return
            self._assembly.failed(exc)
