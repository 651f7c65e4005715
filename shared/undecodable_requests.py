"""Requests whose bytes do not decode (random bytes, a truncated message, invalid UTF-8 in a
string field) are answered INVALID_ARGUMENT, on every service of a server, with one
rate-limited log line instead of gRPC's UNKNOWN and a traceback.

gRPC decodes a request before any servicer code runs, so `shared.grpc_errors` never sees the
failure. `UndecodableRequests` is a server interceptor: it wraps each method's request
deserializer so that a failure becomes an `Undecodable` value, and the method's behaviour so
that such a value is refused before the servicer sees it. Wrapped handlers are cached per
method, so a decodable request pays one dictionary lookup.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Optional

import grpc

from shared.errors import ERROR_CLASS_KEY, InvalidInputError

log = logging.getLogger(__name__)

#: One log line per this many seconds at most, however much garbage arrives.
LOG_INTERVAL_S = 10.0


@dataclass(frozen=True)
class Undecodable:
    """What a request deserializer returns instead of raising."""

    reason: str


class RateLimitedLog:
    """Logs at most one warning per `interval_s`; the next line says how many were left out."""

    def __init__(self, logger: logging.Logger, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._clock = clock
        self._last_s: Optional[float] = None
        self._suppressed = 0
        self._lock = threading.Lock()   # deserializers may run on gRPC's own threads

    def warning(self, message: str, *args: Any) -> None:
        with self._lock:
            now = self._clock()
            if self._last_s is not None and now - self._last_s < self._interval_s:
                self._suppressed += 1
                return
            suppressed, self._suppressed, self._last_s = self._suppressed, 0, now
        if suppressed:
            message += " (and %d more in the last %.0f s)"
            args = (*args, suppressed, self._interval_s)
        self._logger.warning(message, *args)


def _safe_deserializer(method: str, deserialize: Callable[[bytes], Any], log_line: RateLimitedLog) -> Callable[[bytes], Any]:
    def decode(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except Exception as exc:
            reason = f"undecodable request to {method}: {exc}"
            log_line.warning("refused %s (%d bytes)", reason, len(raw))
            return Undecodable(reason)

    return decode


async def _refuse(context: grpc.aio.ServicerContext, request: Undecodable) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason,
                        trailing_metadata=((ERROR_CLASS_KEY, InvalidInputError.__name__),))


async def _checked(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, Undecodable):
            await _refuse(context, request)
        yield request


def _guard_behaviour(behaviour: Callable[..., Any], request_streaming: bool) -> Optional[Callable[..., Any]]:
    """`behaviour` refusing Undecodable requests first, of the same kind (coroutine or async
    generator function), or None when it is neither (then it is left alone)."""
    if inspect.isasyncgenfunction(behaviour):
        async def guarded_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if request_streaming:
                request = _checked(request, context)
            elif isinstance(request, Undecodable):
                await _refuse(context, request)
            async for response in behaviour(request, context):
                yield response

        return guarded_stream
    if inspect.iscoroutinefunction(behaviour):
        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if request_streaming:
                request = _checked(request, context)
            elif isinstance(request, Undecodable):
                await _refuse(context, request)
            return await behaviour(request, context)

        return guarded
    return None


def guard_handler(method: str, handler: grpc.RpcMethodHandler, log_line: RateLimitedLog) -> grpc.RpcMethodHandler:
    """`handler` with its request deserializer and behaviour guarded (unchanged when it has no
    deserializer or a behaviour that is not async)."""
    if handler.request_deserializer is None:
        return handler
    field = {(False, False): "unary_unary", (False, True): "unary_stream",
             (True, False): "stream_unary", (True, True): "stream_stream"}[(handler.request_streaming, handler.response_streaming)]
    behaviour = _guard_behaviour(getattr(handler, field), handler.request_streaming)
    if behaviour is None:
        return handler
    return handler._replace(request_deserializer=_safe_deserializer(method, handler.request_deserializer, log_line),
                            **{field: behaviour})


class UndecodableRequests(grpc.aio.ServerInterceptor):
    """Server interceptor: undecodable requests get INVALID_ARGUMENT on every method."""

    def __init__(self, log_interval_s: float = LOG_INTERVAL_S) -> None:
        self._log_line = RateLimitedLog(log, log_interval_s)
        self._guarded: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Optional[grpc.RpcMethodHandler]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Optional[grpc.RpcMethodHandler]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._guarded.get(method)
        if cached is None or cached[0] is not handler:
            cached = (handler, guard_handler(method, handler, self._log_line))
            self._guarded[method] = cached
        return cached[1]
