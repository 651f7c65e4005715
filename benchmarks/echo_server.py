"""A raw gRPC echo server: the transport floor the daemons are compared against.

    python -m benchmarks.echo_server --port 50099 [--kind aio|uvloop|sync] [--processes N]

It answers `/bench.Echo/Echo` with the request bytes, with no protobuf parsing at all.
`aio` (the default, the issue's baseline) is grpc.aio on asyncio's loop; `uvloop` the same on
uvloop; `sync` the thread-pool server. `--processes N` starts N servers on one port with
SO_REUSEPORT, so the kernel spreads connections over them (one process per core).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
from concurrent import futures

import grpc

METHOD = "/bench.Echo/Echo"
KINDS = ("aio", "uvloop", "sync")
SYNC_WORKERS = 4


def _handler(fn) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler("bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(fn)})


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


def _echo_sync(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request


def _options(reuse_port: bool) -> list[tuple[str, int]]:
    return [("grpc.so_reuseport", 1 if reuse_port else 0)]


async def serve_aio(port: int, reuse_port: bool = False) -> None:
    from shared.grpc_server import add_health_and_reflection, set_serving

    server = grpc.aio.server(options=_options(reuse_port))
    server.add_generic_rpc_handlers((_handler(_echo),))
    health = add_health_and_reflection(server, [])
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await set_serving(health, [], True)
    await server.wait_for_termination()


def serve_sync(port: int, reuse_port: bool = False) -> None:
    from grpc_health.v1 import health, health_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(SYNC_WORKERS), options=_options(reuse_port))
    server.add_generic_rpc_handlers((_handler(_echo_sync),))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def serve(kind: str, port: int, reuse_port: bool = False) -> None:
    if kind == "sync":
        serve_sync(port, reuse_port)
    elif kind == "uvloop":
        from shared.event_loop import run_on_loop

        run_on_loop(serve_aio(port, reuse_port), "uvloop")
    else:
        asyncio.run(serve_aio(port, reuse_port))


def main() -> None:
    parser = argparse.ArgumentParser(description="raw gRPC echo server (benchmark baseline)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--kind", choices=KINDS, default="aio", help="server stack (default: aio)")
    parser.add_argument("--processes", type=int, default=1, help="server processes sharing the port (SO_REUSEPORT)")
    args = parser.parse_args()
    if args.processes < 1:
        parser.error("--processes must be >= 1")
    if args.processes == 1:
        serve(args.kind, args.port)
        return
    ctx = multiprocessing.get_context("spawn")
    children = [ctx.Process(target=serve, args=(args.kind, args.port, True), daemon=True) for _ in range(args.processes)]
    for child in children:
        child.start()

    def stop(*_):
        for child in children:
            if child.pid:
                os.kill(child.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for child in children:
        child.join()


if __name__ == "__main__":
    main()
