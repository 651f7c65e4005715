"""A raw grpc.aio echo server: the transport floor the daemons are compared against.

    python -m edgecascade.echo_server --port 50099

It answers `/bench.Echo/Echo` with the request bytes, with no protobuf parsing at all.
"""

from __future__ import annotations

import argparse
import asyncio

import grpc

METHOD = "/bench.Echo/Echo"


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def serve(port: int) -> None:
    from shared.grpc_server import add_health_and_reflection, set_serving

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler("bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(_echo)})
    server.add_generic_rpc_handlers((handler,))
    health = add_health_and_reflection(server, [])
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await set_serving(health, [], True)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description="raw gRPC echo server (benchmark baseline)")
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
