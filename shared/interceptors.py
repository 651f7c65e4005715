"""Wrapping a gRPC aio method handler so that a guard runs around its behaviour: the pattern the
auth check (shared/auth.py) and the router's client limits (cloud_router/limits.py) share.

A server interceptor sees only the method name and metadata; the guard gets the servicer
context (TLS peer, abort) by running inside the handler instead.
"""

from __future__ import annotations

import inspect
from typing import AsyncContextManager, Callable

import grpc

Guard = Callable[[grpc.aio.ServicerContext], AsyncContextManager[None]]


def guarded(handler: grpc.RpcMethodHandler, guard: Guard) -> grpc.RpcMethodHandler:
    """`handler` with `async with guard(context):` around its behaviour, for all four call shapes
    (streaming responses: around the whole stream)."""

    def wrap(behavior: Callable) -> Callable:
        if inspect.isasyncgenfunction(behavior):
            async def stream(request, context):
                async with guard(context):
                    async for response in behavior(request, context):
                        yield response
            return stream

        async def call(request, context):
            async with guard(context):
                result = behavior(request, context)
                return await result if inspect.isawaitable(result) else result
        return call

    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary), handler.request_deserializer,
                                                   handler.response_serializer)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream), handler.request_deserializer,
                                                    handler.response_serializer)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary), handler.request_deserializer,
                                                    handler.response_serializer)
    return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream), handler.request_deserializer,
                                                 handler.response_serializer)
