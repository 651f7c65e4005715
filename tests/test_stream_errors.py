"""A server-streaming method's typed error reaches the caller with its own code and a clipped
message, after the messages already sent (shared.grpc_errors.grpc_stream_errors), over a real
gRPC server on loopback."""

from __future__ import annotations

import asyncio

import grpc

from shared.errors import InvalidInputError
from shared.grpc_errors import grpc_stream_errors

METHOD = "/test.Streams/Count"


class _Streams:
    @grpc_stream_errors
    async def count(self, request: bytes, context: grpc.aio.ServicerContext):
        yield b"one"
        raise InvalidInputError("bad value " + "x" * 20_000)


async def _call_once() -> tuple[list[bytes], grpc.StatusCode, str]:
    server = grpc.aio.server()
    streams = _Streams()
    handler = grpc.method_handlers_generic_handler("test.Streams", {
        "Count": grpc.unary_stream_rpc_method_handler(streams.count)})
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    received: list[bytes] = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_stream(METHOD)(b"", timeout=10)
            try:
                async for message in call:
                    received.append(message)
            except grpc.aio.AioRpcError as exc:
                return received, exc.code(), exc.details() or ""
            return received, await call.code(), await call.details()
    finally:
        await server.stop(None)


def test_a_long_error_in_a_stream_keeps_its_code_and_is_clipped():
    received, code, details = asyncio.run(_call_once())
    assert received == [b"one"]
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details[:200]
    assert details.startswith("bad value xxx") and len(details) < 2_000

