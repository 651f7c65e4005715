"""The client SDK: `Client` (blocking) and `AsyncClient` (asyncio) for an edge agent or a router.

    from edgecascade import Client
    with Client("127.0.0.1:50061") as client:
        result = client.infer(np.zeros(64, np.float32), timeout_s=1.0)
        print(result.label_name, result.served_by)

Each call has a deadline (`timeout_s`). UNAVAILABLE is retried with exponential backoff within
that deadline; every other failure raises the typed error from `shared.errors` at once.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import grpc
import numpy as np

from protos import edgecascade_pb2 as pb
from protos import edgecascade_pb2_grpc as pb_grpc
from shared.errors import ERROR_CLASS_KEY, RETRY_AFTER_MS_KEY, DeadlineError, InvalidInputError, RateLimitedError, error_for_code, error_named
from shared.grpc_options import channel_options
from shared.proto_convert import ROUTE_FROM_PROTO, infer_request
from shared.sdk_generate import AsyncGenerationStream, GenerationStream, generate_request
from shared.tensor_codec import from_proto
from shared.tls import ClientSecurity, open_aio_channel, open_channel

Input = Union[np.ndarray, str]


@dataclass(frozen=True)
class InferResult:
    request_id: str
    label: int
    label_name: str
    probabilities: np.ndarray
    served_by: str             # edge, cloud, edge_fallback, abstain (out of scope: label_name is the out-of-scope label)
    max_prob: float
    margin: float
    entropy: float
    model_name: str
    model_version: str
    edge_ms: float
    cloud_ms: float
    defer_reason: str
    fallback_reason: str
    abstain_reason: str = ""   # why the answer is out of scope (served_by "abstain"); "" otherwise

    @property
    def out_of_scope(self) -> bool:
        """The cascade abstained: the query matches none of the model's labels."""
        return self.served_by == "abstain"

    @classmethod
    def from_proto(cls, r: pb.InferResponse) -> "InferResult":
        signals = r.signals
        return cls(
            request_id=r.request_id, label=r.label, label_name=r.label_name,
            probabilities=from_proto(r.probabilities), served_by=ROUTE_FROM_PROTO.get(r.served_by, "unspecified"),
            max_prob=signals.max_prob, margin=signals.margin, entropy=signals.entropy,
            model_name=r.model_name, model_version=r.model_version, edge_ms=r.edge_ms, cloud_ms=r.cloud_ms,
            defer_reason=r.defer_reason, fallback_reason=r.fallback_reason, abstain_reason=r.abstain_reason,
        )


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 4
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 1.0

    def backoff_s(self, attempt: int) -> float:
        """Full-jitter exponential backoff before attempt `attempt` (1-based retries)."""
        return random.uniform(0, min(self.max_backoff_s, self.initial_backoff_s * 2 ** (attempt - 1)))


def _checked_timeout_s(timeout_s: float) -> float:
    if not (0 < timeout_s < float("inf")):
        raise InvalidInputError(f"timeout_s must be a positive number of seconds, got {timeout_s}")
    return timeout_s


class _Attempts:
    """The retry schedule of one call, shared by `Client` and `AsyncClient`: `remaining_s()`
    before each attempt (DeadlineError once the deadline has passed), `pause_s(exc)` after a
    failed one (the typed error unless it is UNAVAILABLE with attempts and time left)."""

    def __init__(self, timeout_s: float, retry: RetryPolicy) -> None:
        self.timeout_s = _checked_timeout_s(timeout_s)
        self.retry = retry
        self.deadline_s = time.monotonic() + timeout_s
        self.attempt = 0

    def remaining_s(self) -> float:
        remaining_s = self.deadline_s - time.monotonic()
        if remaining_s <= 0:
            raise DeadlineError(f"no answer within {self.timeout_s} s")
        return remaining_s

    def pause_s(self, exc: grpc.RpcError) -> float:
        self.attempt += 1
        if exc.code() != grpc.StatusCode.UNAVAILABLE or self.attempt >= self.retry.max_attempts:
            raise _typed(exc) from None
        return min(self.retry.backoff_s(self.attempt), max(0.0, self.deadline_s - time.monotonic()))


def build_request(value: Input, *, model: str, request_id: str, priority: int, timeout_s: float) -> pb.InferRequest:
    return infer_request(value, model=model, request_id=request_id, priority=priority, timeout_ms=timeout_s * 1000.0)


def _typed(exc: grpc.RpcError) -> Exception:
    """The typed error of a failed call: the class named in the trailers when the server sent one
    (so a rate limit is a RateLimitedError with its `retry_after_s`), else the code's class."""
    message = exc.details() or exc.code().name
    trailers = {key: value for key, value in (exc.trailing_metadata() or ())}
    name = trailers.get(ERROR_CLASS_KEY)
    error = error_named(name, message) if name else error_for_code(exc.code(), message)
    if isinstance(error, RateLimitedError):
        try:
            error.retry_after_s = float(trailers.get(RETRY_AFTER_MS_KEY, 0)) / 1000.0
        except ValueError:
            pass
    return error


class Client:
    """Blocking client for `EdgeAgent` (default) or `CloudRouter` (`service="router"`).
    `security` (shared.tls.ClientSecurity): TLS files and a bearer token; None is plaintext."""

    def __init__(self, target: str, *, timeout_s: float = 2.0, retry: RetryPolicy = RetryPolicy(),
                 service: str = "agent", max_message_bytes: int = 16 * 1024 * 1024,
                 security: Optional[ClientSecurity] = None) -> None:
        self.timeout_s = timeout_s
        self.retry = retry
        self._channel = open_channel(target, security, options=channel_options(max_message_bytes))
        self._stub = pb_grpc.EdgeAgentStub(self._channel) if service == "agent" else pb_grpc.CloudRouterStub(self._channel)

    def infer(self, value: Input, *, model: str = "", timeout_s: Optional[float] = None,
              request_id: str = "", priority: int = 0) -> InferResult:
        attempts = _Attempts(self.timeout_s if timeout_s is None else timeout_s, self.retry)
        while True:
            remaining_s = attempts.remaining_s()
            request = build_request(value, model=model, request_id=request_id, priority=priority, timeout_s=remaining_s)
            try:
                return InferResult.from_proto(self._stub.Infer(request, timeout=remaining_s))
            except grpc.RpcError as exc:
                time.sleep(attempts.pause_s(exc))

    def generate(self, prompt: Union[str, bytes], *, max_new_tokens: int = 0, temperature: float = 0.0,
                 top_p: float = 0.0, seed: Optional[int] = None, stop: Sequence[str] = (), model: str = "",
                 timeout_s: Optional[float] = None, request_id: str = "") -> GenerationStream:
        """Stream a generation (see `shared.sdk_generate`). 0 means the daemon's default for
        max_new_tokens; temperature 0 is greedy."""
        timeout_s = _checked_timeout_s(self.timeout_s if timeout_s is None else timeout_s)
        request = generate_request(prompt, model=model, request_id=request_id, max_new_tokens=max_new_tokens,
                                   temperature=temperature, top_p=top_p, seed=seed, stop=stop, timeout_s=timeout_s)
        return GenerationStream(self._stub.Generate(request, timeout=timeout_s), request_id)

    def status(self, timeout_s: float = 2.0):
        try:
            return self._stub.GetStatus(pb.StatusRequest(), timeout=timeout_s)
        except grpc.RpcError as exc:
            raise _typed(exc) from None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncClient:
    """asyncio client with the same behaviour as `Client`."""

    def __init__(self, target: str, *, timeout_s: float = 2.0, retry: RetryPolicy = RetryPolicy(),
                 service: str = "agent", max_message_bytes: int = 16 * 1024 * 1024,
                 security: Optional[ClientSecurity] = None) -> None:
        self.timeout_s = timeout_s
        self.retry = retry
        self._channel = open_aio_channel(target, security, options=channel_options(max_message_bytes))
        self._stub = pb_grpc.EdgeAgentStub(self._channel) if service == "agent" else pb_grpc.CloudRouterStub(self._channel)

    async def infer(self, value: Input, *, model: str = "", timeout_s: Optional[float] = None,
                    request_id: str = "", priority: int = 0) -> InferResult:
        attempts = _Attempts(self.timeout_s if timeout_s is None else timeout_s, self.retry)
        while True:
            remaining_s = attempts.remaining_s()
            request = build_request(value, model=model, request_id=request_id, priority=priority, timeout_s=remaining_s)
            try:
                return InferResult.from_proto(await self._stub.Infer(request, timeout=remaining_s))
            except grpc.aio.AioRpcError as exc:
                await asyncio.sleep(attempts.pause_s(exc))

    def generate(self, prompt: Union[str, bytes], *, max_new_tokens: int = 0, temperature: float = 0.0,
                 top_p: float = 0.0, seed: Optional[int] = None, stop: Sequence[str] = (), model: str = "",
                 timeout_s: Optional[float] = None, request_id: str = "") -> AsyncGenerationStream:
        """Stream a generation (see `shared.sdk_generate`). 0 means the daemon's default for
        max_new_tokens; temperature 0 is greedy."""
        timeout_s = _checked_timeout_s(self.timeout_s if timeout_s is None else timeout_s)
        request = generate_request(prompt, model=model, request_id=request_id, max_new_tokens=max_new_tokens,
                                   temperature=temperature, top_p=top_p, seed=seed, stop=stop, timeout_s=timeout_s)
        return AsyncGenerationStream(self._stub.Generate(request, timeout=timeout_s), request_id)

    async def status(self, timeout_s: float = 2.0):
        try:
            return await self._stub.GetStatus(pb.StatusRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise _typed(exc) from None

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
