"""`edgecascade cloud run`: build the router from settings and serve until SIGTERM."""

from __future__ import annotations

import asyncio
import logging

from cloud_router.kserve_backend import RouterKServeBackend
from cloud_router.router import Router
from cloud_router.scheduler import InMemoryScheduler
from cloud_router.servicer import CloudRouterServicer
from cloud_router.settings import RouterSettings
from protos import edgecascade_pb2 as pb
from protos import edgecascade_pb2_grpc as pb_grpc
from shared.errors import ConfigError
from shared.grpc_server import add_health_and_reflection, bind, create_server, run_until_signal, set_serving
from shared.kserve_service import SERVICE_NAME as KSERVE_SERVICE_NAME
from shared.kserve_service import add_kserve_servicer
from shared.metrics import RouterMetrics, serve_metrics
from shared.model import load_model

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CloudRouter"].full_name
SERVICE_NAMES = [SERVICE_NAME, KSERVE_SERVICE_NAME]


def build_router(settings: RouterSettings, on_batch=None) -> Router:
    """The router and its scheduler; `on_batch(model_name, size, seconds)` sees every batch."""
    if not settings.model_dirs:
        raise ConfigError("setting 'model_dirs': the router needs at least one model bundle")
    models = {}
    for bundle in settings.model_dirs:
        model = load_model(bundle)
        if model.name in models:
            raise ConfigError(f"setting 'model_dirs': two bundles are named {model.name!r}")
        models[model.name] = model
    batch, delay = (settings.max_batch_size, settings.max_delay_ms) if settings.batching else (1, 0.0)
    scheduler = InMemoryScheduler(models, max_batch_size=batch, max_delay_ms=delay, max_queue=settings.max_queue,
                                  on_batch=on_batch)
    return Router(models, scheduler, router_id=settings.router_id)


async def serve(settings: RouterSettings, ready_callback=None) -> None:
    metrics = RouterMetrics(settings.router_id)
    router = build_router(settings, on_batch=metrics.observe_batch)
    metrics.watch(router)
    await router.start()
    server = create_server(settings.max_message_bytes)
    pb_grpc.add_CloudRouterServicer_to_server(CloudRouterServicer(router, settings, metrics), server)
    add_kserve_servicer(server, RouterKServeBackend(router, settings, metrics), metrics)
    health = add_health_and_reflection(server, SERVICE_NAMES)
    port = bind(server, settings.listen)
    serve_metrics(metrics, settings.listen, settings.metrics_port)
    await server.start()
    await set_serving(health, SERVICE_NAMES, True)
    log.info("cloud router %s serving %s on port %d", settings.router_id, sorted(router.models), port)
    if ready_callback:
        ready_callback(port)
    await run_until_signal(
        server,
        grace_s=settings.shutdown_grace_s,
        on_draining=lambda: set_serving(health, SERVICE_NAMES, False),
        on_stopped=router.stop,
    )


def run(settings: RouterSettings) -> None:
    asyncio.run(serve(settings))
