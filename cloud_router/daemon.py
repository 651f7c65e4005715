"""`edgecascade cloud run`: build the router from settings and serve until SIGTERM."""

from __future__ import annotations

import asyncio
import logging

from cloud_router.router import Router
from cloud_router.scheduler import InMemoryScheduler
from cloud_router.servicer import CloudRouterServicer
from cloud_router.settings import RouterSettings
from protos import edgecascade_pb2 as pb
from protos import edgecascade_pb2_grpc as pb_grpc
from shared.errors import ConfigError
from shared.grpc_server import add_health_and_reflection, bind, create_server, run_until_signal, set_serving
from shared.model import load_model

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CloudRouter"].full_name


def build_router(settings: RouterSettings) -> Router:
    if not settings.model_dirs:
        raise ConfigError("setting 'model_dirs': the router needs at least one model bundle")
    models = {}
    for bundle in settings.model_dirs:
        model = load_model(bundle)
        if model.name in models:
            raise ConfigError(f"setting 'model_dirs': two bundles are named {model.name!r}")
        models[model.name] = model
    batch, delay = (settings.max_batch_size, settings.max_delay_ms) if settings.batching else (1, 0.0)
    scheduler = InMemoryScheduler(models, max_batch_size=batch, max_delay_ms=delay, max_queue=settings.max_queue)
    return Router(models, scheduler, router_id=settings.router_id)


async def serve(settings: RouterSettings, ready_callback=None) -> None:
    router = build_router(settings)
    await router.start()
    server = create_server(settings.max_message_bytes)
    pb_grpc.add_CloudRouterServicer_to_server(CloudRouterServicer(router, settings), server)
    health = add_health_and_reflection(server, [SERVICE_NAME])
    port = bind(server, settings.listen)
    await server.start()
    await set_serving(health, [SERVICE_NAME], True)
    log.info("cloud router %s serving %s on port %d", settings.router_id, sorted(router.models), port)
    if ready_callback:
        ready_callback(port)
    await run_until_signal(
        server,
        grace_s=settings.shutdown_grace_s,
        on_draining=lambda: set_serving(health, [SERVICE_NAME], False),
        on_stopped=router.stop,
    )


def run(settings: RouterSettings) -> None:
    asyncio.run(serve(settings))
