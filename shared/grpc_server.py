"""What both daemons' gRPC servers share: message limits, health, reflection, binding."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Iterable, Optional, Sequence

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from protos import edgecascade_pb2, grpc_service_pb2
from shared.grpc_options import server_options
from shared.undecodable_requests import UndecodableRequests

if TYPE_CHECKING:
    from shared.tls import ServerSecurity

log = logging.getLogger(__name__)


def create_server(max_message_bytes: int, *, interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
                  max_concurrent_rpcs: Optional[int] = None) -> grpc.aio.Server:
    """An aio server; messages over the limit, and RPCs beyond `max_concurrent_rpcs` at once, are
    refused with RESOURCE_EXHAUSTED by gRPC, and requests that do not decode with INVALID_ARGUMENT
    on every service (`UndecodableRequests`). `interceptors` (credentials, limits) run first, in
    order, the first outermost."""
    return grpc.aio.server(interceptors=[*interceptors, UndecodableRequests()], maximum_concurrent_rpcs=max_concurrent_rpcs,
                           options=server_options(max_message_bytes))


#: Every proto file a daemon serves. The KServe file lives in a private descriptor pool (so
#: tritonclient can share a process with it), so reflection gets a pool of its own holding all.
SERVED_PROTO_FILES: tuple[FileDescriptor, ...] = (
    edgecascade_pb2.DESCRIPTOR,
    grpc_service_pb2.DESCRIPTOR,
    health_pb2.DESCRIPTOR,
    reflection_pb2.DESCRIPTOR,
)


def reflection_pool(files: Iterable[FileDescriptor] = SERVED_PROTO_FILES) -> descriptor_pool.DescriptorPool:
    """A descriptor pool holding `files` and their imports (imports added first)."""
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file: FileDescriptor) -> None:
        if file.name in added:
            return
        for dependency in file.dependencies:
            add(dependency)
        pool.AddSerializedFile(file.serialized_pb)
        added.add(file.name)

    for file in files:
        add(file)
    return pool


def add_health_and_reflection(server: grpc.aio.Server, service_names: Iterable[str]) -> health.aio.HealthServicer:
    """Standard grpc.health.v1 (overall and per service) and server reflection over every
    file in SERVED_PROTO_FILES, so grpcurl-style tools can list, describe and call services."""
    names = list(service_names)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        names + [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
        pool=reflection_pool(),
    )
    return health_servicer


async def start_health_port(health_servicer: health.aio.HealthServicer, listen: Optional[str]) -> Optional[grpc.aio.Server]:
    """A plaintext port serving only grpc.health.v1, with the same statuses as the main port, for
    probes that cannot speak TLS (Kubernetes' built-in gRPC probes); None when `listen` is unset.
    It carries no request data and no credentials: a status is all it tells anyone."""
    if not listen:
        return None
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(listen)
    if port == 0:
        from shared.errors import ConfigError

        raise ConfigError(f"setting 'health_listen': cannot listen on {listen!r} (in use or not a valid host:port)")
    await server.start()
    log.info("health checks only, in plaintext, on port %d", port)
    return server


async def set_serving(health_servicer: health.aio.HealthServicer, service_names: Iterable[str], serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ["", *service_names]:
        await health_servicer.set(name, status)


def bind(server: grpc.aio.Server, listen: str, security: Optional["ServerSecurity"] = None, *, daemon: str = "") -> int:
    """Bind to host:port (port 0 picks a free one) with TLS, mutual TLS or explicit plaintext per
    `security` (shared/tls.py); None binds plaintext without a word (test servers). Returns the port.
    A failed bind is a ConfigError saying why (port in use, not an address of this host, ...)."""
    if security is not None:
        from shared.tls import bind_server

        return bind_server(server, listen, security, daemon=daemon or "daemon")
    from shared.errors import ConfigError
    from shared.listen import bind_failure

    try:
        port = server.add_insecure_port(listen)
    except RuntimeError:  # grpcio >= 1.60 raises where older versions returned 0
        port = 0
    if port == 0:
        raise ConfigError(bind_failure(listen))
    return port
