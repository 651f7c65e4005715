"""Per-client limits on the router's inference RPCs: calls in flight and calls per second.

A client is the authenticated caller (token or certificate name, shared/auth.py), or the peer's
address when the router checks no credentials. A call over either limit is answered
RESOURCE_EXHAUSTED at once, before it touches a queue, with the error class `RateLimitedError`
and a retry hint in milliseconds in the trailing metadata (`retry-after-ms`). An edge agent
takes that answer as a local fallback (`cloud_rate_limited`) that does not count against its
circuit breaker. A streaming call counts as one call for as long as it is open.

The table of clients is bounded (`max_clients`): idle clients are forgotten first, and when
every tracked client is busy a new one is refused rather than tracked.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Optional

import grpc
from pydantic import Field
from pydantic_settings import BaseSettings

from shared.auth import current_principal, peer_host
from shared.errors import ERROR_CLASS_KEY, RETRY_AFTER_MS_KEY, RateLimitedError
from shared.interceptors import guarded

#: The RPCs the limits apply to (inference); heartbeats, updates and reads are not limited here.
LIMITED_METHODS = frozenset({
    "/edgecascade.v1.CloudRouter/Infer",
    "/inference.GRPCInferenceService/ModelInfer",
    "/inference.GRPCInferenceService/ModelStreamInfer",
})


@dataclass
class _Client:
    in_flight: int = 0
    tokens: float = 0.0
    refilled_s: float = field(default_factory=time.monotonic)
    mean_call_s: float = 0.01


class ClientLimits:
    """The bookkeeping, without gRPC: `admit(client)` is None (admitted; call `release`) or the
    seconds after which to retry."""

    def __init__(self, *, max_concurrent: Optional[int], rate_rps: Optional[float], burst_s: float = 1.0,
                 max_clients: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_concurrent = max_concurrent
        self.rate_rps = rate_rps
        self.capacity = max(1.0, rate_rps * burst_s) if rate_rps else 0.0
        self.max_clients = max_clients
        self.clock = clock
        self._clients: "OrderedDict[str, _Client]" = OrderedDict()
        self.refused = 0

    @property
    def enabled(self) -> bool:
        return self.max_concurrent is not None or self.rate_rps is not None

    def __len__(self) -> int:
        return len(self._clients)

    def _client(self, name: str) -> Optional[_Client]:
        client = self._clients.get(name)
        if client is not None:
            self._clients.move_to_end(name)
            return client
        if len(self._clients) >= self.max_clients:
            for old_name, old in list(self._clients.items()):  # oldest first
                if old.in_flight == 0:
                    del self._clients[old_name]
                    break
            else:
                return None
        client = _Client(tokens=self.capacity, refilled_s=self.clock())
        self._clients[name] = client
        return client

    def admit(self, name: str) -> Optional[float]:
        client = self._client(name)
        if client is None:
            self.refused += 1
            return 1.0
        if self.max_concurrent is not None and client.in_flight >= self.max_concurrent:
            self.refused += 1
            return max(0.001, client.mean_call_s)
        if self.rate_rps:
            now = self.clock()
            client.tokens = min(self.capacity, client.tokens + (now - client.refilled_s) * self.rate_rps)
            client.refilled_s = now
            if client.tokens < 1.0 - 1e-9:
                self.refused += 1
                return (1.0 - client.tokens) / self.rate_rps
            client.tokens -= 1.0
        client.in_flight += 1
        return None

    def release(self, name: str, call_s: float) -> None:
        client = self._clients.get(name)
        if client is not None:
            client.in_flight = max(0, client.in_flight - 1)
            client.mean_call_s += 0.1 * (call_s - client.mean_call_s)


def client_name(context: grpc.aio.ServicerContext) -> str:
    principal = current_principal.get()
    return principal.name if principal is not None else f"peer:{peer_host(context)}"


class LimitsInterceptor(grpc.aio.ServerInterceptor):
    """Applies ClientLimits to LIMITED_METHODS. Runs after the AuthInterceptor (it reads the
    caller it found)."""

    def __init__(self, limits: ClientLimits) -> None:
        self.limits = limits

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method not in LIMITED_METHODS:
            return handler
        limits = self.limits

        @contextlib.asynccontextmanager
        async def limited(context):
            name = client_name(context)
            retry_after_s = limits.admit(name)
            if retry_after_s is not None:
                retry_ms = max(1, int(retry_after_s * 1000))
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    f"client {name} is over its limit "
                                    f"({limits.max_concurrent} calls at once, {limits.rate_rps} per second); "
                                    f"retry in {retry_ms} ms",
                                    trailing_metadata=((ERROR_CLASS_KEY, RateLimitedError.__name__),
                                                       (RETRY_AFTER_MS_KEY, str(retry_ms))))
            started = time.monotonic()
            try:
                yield
            finally:
                limits.release(name, time.monotonic() - started)

        return guarded(handler, limited)


class ClientLimitSettings(BaseSettings):
    """The router's per-client limit settings (RouterSettings inherits them)."""

    client_max_concurrent: Optional[int] = Field(default=1024, ge=1)
    """Inference calls one client may have in flight at the router; more are refused at once with
    RESOURCE_EXHAUSTED and a retry hint. None: no limit."""
    client_rate_rps: Optional[float] = Field(default=None, gt=0)
    """Inference calls per second one client may start (token bucket); None: no limit."""
    client_burst_s: float = Field(default=1.0, gt=0)
    """The rate bucket holds this many seconds' worth of calls (at least one)."""


def limits_interceptors(settings) -> list[grpc.aio.ServerInterceptor]:
    limits = ClientLimits(max_concurrent=settings.client_max_concurrent, rate_rps=settings.client_rate_rps,
                          burst_s=settings.client_burst_s)
    return [LimitsInterceptor(limits)] if limits.enabled else []
