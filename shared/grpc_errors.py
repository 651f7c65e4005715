"""Turns edgecascade errors into gRPC statuses, in one place, for every servicer."""

from __future__ import annotations

import functools
import logging
from typing import Any, AsyncIterator, Awaitable, Callable, NoReturn, TypeVar

import grpc

from shared.errors import ERROR_CLASS_KEY, EdgecascadeError, clipped

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


async def abort_with(context: grpc.aio.ServicerContext, exc: EdgecascadeError) -> NoReturn:
    """End the call with `exc`'s code, its clipped message and its class name in the trailing
    metadata (`ERROR_CLASS_KEY`): the one way a typed error becomes a gRPC status."""
    await context.abort(exc.code, clipped(str(exc)), trailing_metadata=((ERROR_CLASS_KEY, type(exc).__name__),))
    raise AssertionError("context.abort returned")  # it always raises


async def _abort_for(context: grpc.aio.ServicerContext, exc: Exception, method_name: str) -> None:
    """End the call for `exc`: a typed error with its own code, anything else INTERNAL (logged
    with its traceback, the caller sees one line)."""
    if isinstance(exc, EdgecascadeError):
        await abort_with(context, exc)
    log.exception("unexpected error in %s", method_name)
    await context.abort(grpc.StatusCode.INTERNAL, clipped(f"internal error: {type(exc).__name__}: {exc}"))


def grpc_errors(method: F) -> F:
    """Decorate an async servicer method: typed errors abort with their code, others INTERNAL.
    The error's class name travels in the trailing metadata (`ERROR_CLASS_KEY`), so a caller can
    tell two errors with one code apart (a spent cloud budget from a full queue).

    The daemon keeps serving either way; an unexpected exception is logged with its trace
    but the caller sees only a one-line message. Messages are clipped (`shared.errors.clipped`),
    so no error becomes too large for gRPC's header and turns into RESOURCE_EXHAUSTED.
    """

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort_for(context, exc, method.__name__)

    return wrapper  # type: ignore[return-value]


def grpc_stream_errors(method: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    """`grpc_errors` for a server-streaming method (an async generator): a typed error ends the
    stream with its code, after the messages already sent."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for message in method(self, request, context):
                yield message
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort_for(context, exc, method.__name__)

    return wrapper
