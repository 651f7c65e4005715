"""The edge agent daemon (`EdgeAgentDaemon`): load the edge bundle and/or language model,
connect to the cloud, serve.
`run` is `edgecascade edge run`: the daemon until SIGTERM."""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import grpc

from edge_agent.breaker import CircuitBreaker
from edge_agent.cascade import ActiveModel, Cascade
from edge_agent.cloud_link import CloudLink
from edge_agent.cloud_reachability import BreakerLog
from edge_agent.heartbeat import Heartbeat
from edge_agent.kserve_backend import EdgeKServeBackend
from edge_agent.llm_cascade import LLMCascade, build_llm_cascade
from edge_agent.metrics import AgentMetrics
from edge_agent.model_slot import load_slot
from edge_agent.servicer import EdgeAgentServicer
from edge_agent.settings import EdgeSettings
from edge_agent.systemd_notify import SystemdNotifier
from edge_agent.updater import Updater, open_version_store, start_updater
from edge_agent.version_store import VersionStore
from protos import edgecascade_pb2 as pb
from protos import edgecascade_pb2_grpc as pb_grpc
from shared.daemon import GrpcDaemon, run_until_signal
from shared.errors import ConfigError
from shared.event_loop import run_on_loop
from shared.kserve_service import SERVICE_NAME as KSERVE_SERVICE_NAME
from shared.kserve_service import add_kserve_servicer
from shared.model_card import POLICY_FILE
from shared.model_loader import load_model
from shared.policy import load_policy

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EdgeAgent"].full_name
SERVICE_NAMES = [SERVICE_NAME, KSERVE_SERVICE_NAME]


def load_active_model(settings: EdgeSettings, bundle_dir: Optional[Path] = None) -> ActiveModel:
    """Load the bundle and its policy; refuse a policy made for another model. `bundle_dir`
    (the updater's current version) replaces settings.bundle_dir and brings its own policy."""
    if bundle_dir is not None:
        return load_slot(bundle_dir, settings.providers)
    if settings.bundle_dir is None:
        raise ConfigError("setting 'bundle_dir': no classifier bundle to load")
    model = load_model(settings.bundle_dir, providers=settings.providers, edge=True)
    policy = load_policy(settings.policy_file or settings.bundle_dir / POLICY_FILE)
    policy.check_matches(model.card)
    model.load()
    return ActiveModel(model, policy)


def cloud_breaker(settings: EdgeSettings, cloud_target: str) -> CircuitBreaker:
    """A circuit breaker for the agent's links to the router at `cloud_target`."""
    return CircuitBreaker(settings.breaker_failure_threshold, settings.breaker_cooldown_s,
                          on_change=BreakerLog(cloud_target, failure_threshold=settings.breaker_failure_threshold,
                                               cooldown_s=settings.breaker_cooldown_s))


def build_cascade(settings: EdgeSettings, bundle_dir: Optional[Path] = None) -> Cascade:
    active = load_active_model(settings, bundle_dir)
    cloud = None
    if settings.cloud_target:
        cloud = CloudLink(settings.cloud_target, model=settings.cloud_model, breaker=cloud_breaker(settings, settings.cloud_target),
                          max_message_bytes=settings.max_message_bytes, agent_id=settings.agent_id,
                          security=settings.cloud_security(settings.plaintext))
    return Cascade(active, cloud, fallback_reserve_ms=settings.fallback_reserve_ms,
                   shed_at_pressure=settings.shed_at_pressure)


async def start_openai_endpoint(settings: EdgeSettings, llm: Optional[LLMCascade]) -> Optional[web.AppRunner]:
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


class EdgeAgentDaemon(GrpcDaemon[EdgeSettings]):
    """The edge agent: cascade, cloud link, heartbeat and updater behind the EdgeAgent and
    KServe gRPC APIs, and the language model's cascade behind Generate. Without a classifier
    bundle (LM only) `cascade` is None: no heartbeat, no updater. `start()`, `port`,
    `serve_forever()`, `stop()` (see `GrpcDaemon`)."""

    service_names = SERVICE_NAMES
    daemon_name = "edge agent"

    def __init__(self, settings: EdgeSettings) -> None:
        super().__init__(settings)
        self.cascade: Optional[Cascade] = None
        self.metrics: Optional[AgentMetrics] = None
        self._store: Optional[VersionStore] = None
        self._heartbeat: Optional[Heartbeat] = None
        self._updater: Optional[Updater] = None
        self._systemd: Optional[SystemdNotifier] = None
        self.llm: Optional[LLMCascade] = None
        self._openai_runner: Optional[web.AppRunner] = None

    async def _open(self, server: grpc.aio.Server) -> AgentMetrics:
        settings = self.settings
        self._store = open_version_store(settings)
        cascade = None
        if settings.bundle_dir is not None:
            cascade = self.cascade = build_cascade(settings, self._store.current_dir() if self._store else None)
        metrics = self.metrics = AgentMetrics(cascade, settings.agent_id)
        # the language model shares the classifier link's breaker; an LM-only agent gets one of its own
        if cascade is not None:
            breaker = cascade.cloud.breaker if cascade.cloud else None
        else:
            breaker = cloud_breaker(settings, settings.cloud_target) if settings.cloud_target else None
        llm = self.llm = build_llm_cascade(settings, breaker)
        servicer = EdgeAgentServicer(cascade, settings, metrics)
        servicer.llm, servicer.llm_default_max_new_tokens = llm, settings.llm_max_new_tokens
        pb_grpc.add_EdgeAgentServicer_to_server(servicer, server)
        add_kserve_servicer(server, EdgeKServeBackend(cascade, settings, metrics), metrics)
        self._openai_runner = await start_openai_endpoint(settings, llm)
        return metrics

    def _serves(self) -> str:
        """What this agent serves, for the logs and systemd: the classifier, the language model."""
        served = []
        if self.cascade is not None:
            served.append(f"{self.cascade.active.model.name} v{self.cascade.active.model.version}")
        if self.llm is not None:
            served.append(f"language model {self.llm.model.name}")
        return " and ".join(served)

    async def _serving(self) -> None:
        settings, cascade = self.settings, self.cascade
        assert self.metrics is not None
        log.info("edge agent %s serving %s on port %d (cloud: %s)", settings.agent_id, self._serves(), self.port,
                 settings.cloud_target or "none")
        if cascade is None:
            log.info("no classifier bundle (bundle_dir not set): Infer and KServe answer NOT_FOUND; "
                     "no heartbeat to the router, no model updates")
        elif cascade.cloud is not None:
            self._heartbeat = Heartbeat(cascade, settings.agent_id, interval_s=settings.heartbeat_interval_s,
                                        pressure_stale_s=settings.pressure_stale_s)
            self._heartbeat.start()
        if cascade is not None:
            self._updater = start_updater(cascade, self._store, self.metrics, settings)
        gc.freeze()  # start-up objects leave the collector's view: no 20 ms full collections mid-swap
        self._systemd = SystemdNotifier.from_environment()  # no-op outside a Type=notify unit
        self._systemd.ready(f"serving {self._serves()} on port {self.port}")
        self._systemd.start_watchdog()

    async def _draining(self) -> None:
        if self._systemd is not None:
            self._systemd.stopping()

    async def _close(self) -> None:
        if self._heartbeat is not None:
            await self._heartbeat.stop()
        if self._updater is not None:
            await self._updater.stop()
        if self.cascade is not None and self.cascade.cloud:
            await self.cascade.cloud.close()
        if self._openai_runner is not None:
            await self._openai_runner.cleanup()
        if self.llm is not None:
            await self.llm.close()
        if self._systemd is not None:
            await self._systemd.close()


def run(settings: EdgeSettings) -> None:
    """`edgecascade edge run`: serve until SIGTERM or SIGINT, then drain."""
    run_on_loop(run_until_signal(EdgeAgentDaemon(settings)), settings.event_loop)
