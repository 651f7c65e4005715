"""`edgecascade edge run`: load the edge bundle, connect to the cloud, serve until SIGTERM."""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import Optional

from edge_agent.breaker import CircuitBreaker
from edge_agent.cascade import ActiveModel, Cascade
from edge_agent.cloud_link import CloudLink
from edge_agent.cloud_reachability import BreakerLog
from edge_agent.heartbeat import Heartbeat
from edge_agent.kserve_backend import EdgeKServeBackend
from edge_agent.metrics import AgentMetrics
from edge_agent.llm_cascade import build_llm_cascade
from edge_agent.model_slot import load_slot
from edge_agent.servicer import EdgeAgentServicer
from edge_agent.settings import EdgeSettings
from edge_agent.systemd_notify import SystemdNotifier
from edge_agent.updater import open_version_store, start_updater
from protos import edgecascade_pb2 as pb
from protos import edgecascade_pb2_grpc as pb_grpc
from shared.auth import server_interceptors
from shared.errors import ConfigError
from shared.event_loop import run_on_loop
from shared.grpc_server import (add_health_and_reflection, bind, create_server, run_until_signal, set_serving,
                                start_health_port)
from shared.kserve_service import SERVICE_NAME as KSERVE_SERVICE_NAME
from shared.kserve_service import add_kserve_servicer
from shared.metrics import serve_metrics
from shared.model_card import POLICY_FILE
from shared.model_loader import load_model
from shared.policy import load_policy

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EdgeAgent"].full_name
SERVICE_NAMES = [SERVICE_NAME, KSERVE_SERVICE_NAME]


def load_active_model(settings: EdgeSettings, bundle_dir: Optional[Path] = None) -> ActiveModel:
    """Load the bundle and its policy; refuse a policy made for another model. `bundle_dir`
    (the updater's current version) replaces settings.bundle_dir and brings its own policy."""
    if bundle_dir is not None:
        return load_slot(bundle_dir, settings.providers)
    model = load_model(settings.bundle_dir, providers=settings.providers, edge=True)
    policy = load_policy(settings.policy_file or settings.bundle_dir / POLICY_FILE)
    policy.check_matches(model.card)
    model.load()
    return ActiveModel(model, policy)


def build_cascade(settings: EdgeSettings, bundle_dir: Optional[Path] = None) -> Cascade:
    active = load_active_model(settings, bundle_dir)
    cloud = None
    if settings.cloud_target:
        breaker = CircuitBreaker(settings.breaker_failure_threshold, settings.breaker_cooldown_s,
                                 on_change=BreakerLog(settings.cloud_target, failure_threshold=settings.breaker_failure_threshold,
                                                      cooldown_s=settings.breaker_cooldown_s))
        cloud = CloudLink(settings.cloud_target, model=settings.cloud_model, breaker=breaker,
                          max_message_bytes=settings.max_message_bytes, agent_id=settings.agent_id,
                          security=settings.cloud_security(settings.plaintext))
    return Cascade(active, cloud, fallback_reserve_ms=settings.fallback_reserve_ms,
                   shed_at_pressure=settings.shed_at_pressure)


async def start_openai_endpoint(settings: EdgeSettings, llm):
    """The running OpenAI-compatible HTTP endpoint (an aiohttp AppRunner), or None when off."""
    if settings.openai_listen is None:
        return None
    if llm is None:
        raise ConfigError("setting 'openai_listen': the OpenAI-compatible endpoint needs a language model (llm_dir)")
    from aiohttp import web

    from edge_agent.openai_http import OpenAIEndpoint

    host, _, port = settings.openai_listen.rpartition(":")
    endpoint = OpenAIEndpoint(llm, default_max_tokens=settings.llm_max_new_tokens,
                              default_timeout_s=settings.openai_timeout_s)
    runner = web.AppRunner(endpoint.app())
    await runner.setup()
    await web.TCPSite(runner, host or "127.0.0.1", int(port)).start()
    log.info("OpenAI-compatible endpoint on http://%s/v1", settings.openai_listen)
    return runner


async def serve(settings: EdgeSettings, ready_callback=None) -> None:
    store = open_version_store(settings)
    cascade = build_cascade(settings, store.current_dir() if store else None)
    metrics = AgentMetrics(cascade, settings.agent_id)
    server = create_server(settings.max_message_bytes, interceptors=server_interceptors(settings, daemon="edge agent"),
                           max_concurrent_rpcs=settings.max_concurrent_rpcs)
    llm = build_llm_cascade(settings, cascade.cloud.breaker if cascade.cloud else None)
    servicer = EdgeAgentServicer(cascade, settings, metrics)
    servicer.llm, servicer.llm_default_max_new_tokens = llm, settings.llm_max_new_tokens
    pb_grpc.add_EdgeAgentServicer_to_server(servicer, server)
    add_kserve_servicer(server, EdgeKServeBackend(cascade, settings, metrics), metrics)
    health = add_health_and_reflection(server, SERVICE_NAMES)
    openai_runner = await start_openai_endpoint(settings, llm)
    port = bind(server, settings.listen, settings.server_security(), daemon="edge agent")
    serve_metrics(metrics, settings.listen, settings.metrics_port)
    await server.start()
    health_server = await start_health_port(health, settings.health_listen)
    await set_serving(health, SERVICE_NAMES, True)
    log.info("edge agent %s serving %s v%d on port %d (cloud: %s)", settings.agent_id,
             cascade.active.model.name, cascade.active.model.version, port, settings.cloud_target or "none")
    heartbeat = None
    if cascade.cloud is not None:
        heartbeat = Heartbeat(cascade, settings.agent_id, interval_s=settings.heartbeat_interval_s,
                              pressure_stale_s=settings.pressure_stale_s)
        heartbeat.start()
    updater = start_updater(cascade, store, metrics, settings)
    gc.freeze()  # start-up objects leave the collector's view: no 20 ms full collections mid-swap
    if ready_callback:
        ready_callback(port)
    systemd = SystemdNotifier.from_environment()  # no-op outside a Type=notify unit
    systemd.ready(f"serving {cascade.active.model.name} v{cascade.active.model.version} on port {port}")
    systemd.start_watchdog()

    async def draining() -> None:
        systemd.stopping()
        await set_serving(health, SERVICE_NAMES, False)

    async def stopped() -> None:
        if heartbeat is not None:
            await heartbeat.stop()
        if updater is not None:
            await updater.stop()
        if cascade.cloud:
            await cascade.cloud.close()
        if openai_runner is not None:
            await openai_runner.cleanup()
        if llm is not None:
            await llm.close()
        await systemd.close()
        if health_server is not None:
            await health_server.stop(0)

    await run_until_signal(
        server,
        grace_s=settings.shutdown_grace_s,
        on_draining=draining,
        on_stopped=stopped,
    )


def run(settings: EdgeSettings) -> None:
    run_on_loop(serve(settings), settings.event_loop)
