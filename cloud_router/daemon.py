"""The cloud router daemon (`RouterDaemon`): build the router from settings and serve.
`run` is `edgecascade cloud run`: the daemon until SIGTERM."""

from __future__ import annotations

import logging
from typing import Any, Optional

import grpc

from cloud_router.budget import BucketStore, CloudBudget, MemoryBuckets, RedisBuckets
from cloud_router.fleet import FleetRegistry, MemoryFleetRegistry, RedisFleetRegistry
from cloud_router.kserve_backend import RouterKServeBackend
from cloud_router.limits import limits_interceptors
from cloud_router.metrics import RouterMetrics
from cloud_router.redis_keys import RedisKeys
from cloud_router.router import Router
from cloud_router.scheduler import InMemoryScheduler, Scheduler
from cloud_router.servicer import CloudRouterServicer
from cloud_router.settings import RouterSettings
from cloud_router.updates import UpdateBackend, UpdateService
from protos import edgecascade_pb2 as pb
from protos import edgecascade_pb2_grpc as pb_grpc
from shared.daemon import GrpcDaemon, run_until_signal
from shared.errors import ConfigError
from shared.event_loop import run_on_loop
from shared.kserve_service import SERVICE_NAME as KSERVE_SERVICE_NAME
from shared.kserve_service import add_kserve_servicer
from shared.model_loader import load_model

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CloudRouter"].full_name
SERVICE_NAMES = [SERVICE_NAME, KSERVE_SERVICE_NAME]


def check_hosts_a_model(settings: RouterSettings) -> None:
    """A ConfigError when the settings name no model of either kind."""
    if not settings.model_dirs and not settings.llm_dirs and not settings.llm_remote_url:
        raise ConfigError("the router has nothing to serve: set model_dirs (classifier bundles), llm_dirs or "
                          "llm_remote_url (language models), or several")


def load_models(settings: RouterSettings) -> dict:
    """The classifier bundles of `model_dirs` by name (empty on a language-model-only router)."""
    models = {}
    for bundle in settings.model_dirs:
        model = load_model(bundle)
        if model.name in models:
            raise ConfigError(f"setting 'model_dirs': two bundles are named {model.name!r}")
        models[model.name] = model
    return models


def build_router(settings: RouterSettings, redis_client: Optional[Any] = None, on_batch=None) -> Router:
    """The router for `settings`: the in-memory scheduler, or (given a connected Redis client
    for `redis_url`) the Redis front end. Budget and fleet registry follow the same choice.
    `on_batch(model_name, size, seconds)` sees every batch this process computes."""
    models = load_models(settings)
    batch, delay = (settings.max_batch_size, settings.max_delay_ms) if settings.batching else (1, 0.0)
    keys = RedisKeys(settings.redis_prefix)
    saturation_wait_s = settings.pressure_saturation_wait_ms / 1000.0
    scheduler: Scheduler
    buckets: BucketStore
    fleet: FleetRegistry
    if redis_client is None:
        scheduler = InMemoryScheduler(models, max_batch_size=batch, max_delay_ms=delay, max_queue=settings.max_queue,
                                      on_batch=on_batch, saturation_wait_s=saturation_wait_s)
        buckets = MemoryBuckets()
        fleet = MemoryFleetRegistry()
    else:
        from cloud_router.redis_scheduler import RedisScheduler

        scheduler = RedisScheduler(redis_client, keys, models, router_id=settings.router_id, max_queue=settings.max_queue,
                                   stream_max_len=settings.redis_stream_max_len, saturation_wait_s=saturation_wait_s,
                                   pressure_interval_s=settings.pressure_interval_ms / 1000.0)
        buckets = RedisBuckets(redis_client)
        fleet = RedisFleetRegistry(redis_client, keys)
    budget = CloudBudget(buckets, keys, agent_rps=settings.cloud_budget_agent_rps, fleet_rps=settings.cloud_budget_fleet_rps,
                         burst_s=settings.cloud_budget_burst_s)
    return Router(models, scheduler, router_id=settings.router_id, budget=budget if budget.enabled else None,
                  fleet=fleet, fleet_ttl_s=settings.fleet_ttl_s, serves_requests=settings.role != "worker",
                  load_models=settings.role != "frontend")


def build_worker(settings: RouterSettings, router: Router, redis_client: Any, on_batch=None):
    """The Redis worker of a `worker` or `all` replica, computing with the router's models."""
    from cloud_router.redis_worker import RedisWorker

    batch = settings.max_batch_size if settings.batching else 1
    return RedisWorker(redis_client, RedisKeys(settings.redis_prefix), router.models, worker_id=settings.router_id,
                       max_batch_size=batch, claim_idle_ms=settings.redis_claim_idle_ms,
                       worker_ttl_ms=settings.redis_worker_ttl_ms,
                       max_deliveries=settings.redis_max_deliveries, block_ms=settings.redis_block_ms,
                       on_batch=on_batch)


async def load_llm_hosts(settings: RouterSettings) -> dict:
    """The causal-LM hosts of `llm_dirs` and the remote engine, loaded, by name (empty when none)."""
    from cloud_router.llm_host import CausalLMHost

    hosts: dict = {}
    for model_dir in settings.llm_dirs:
        host = CausalLMHost(model_dir, max_batch_size=settings.llm_max_batch_size if settings.batching else 1,
                            max_delay_ms=settings.llm_max_delay_ms if settings.batching else 0.0,
                            continuous_batching=settings.llm_continuous_batching)
        if host.name in hosts:
            raise ConfigError(f"setting 'llm_dirs': two checkpoints are named {host.name!r}")
        await host.load()
        hosts[host.name] = host
    if settings.llm_remote_url:
        from cloud_router.openai_backend import RemoteCausalLM

        if not settings.llm_remote_model:
            raise ConfigError("setting 'llm_remote_model': name the remote engine's model (llm_remote_url is set)")
        remote = RemoteCausalLM(settings.llm_remote_url, settings.llm_remote_model, name=settings.llm_remote_name or None)
        await remote.load()
        hosts[remote.name] = remote
    return hosts


class RouterDaemon(GrpcDaemon[RouterSettings]):
    """The cloud router: models, scheduler (in memory or on Redis), Redis worker and update
    service behind the CloudRouter and KServe gRPC APIs. `start()`, `port`,
    `serve_forever()`, `stop()` (see `GrpcDaemon`)."""

    service_names = SERVICE_NAMES
    daemon_name = "cloud router"

    def __init__(self, settings: RouterSettings) -> None:
        super().__init__(settings)
        self.router: Optional[Router] = None
        self.metrics: Optional[RouterMetrics] = None
        self._updates: Optional[UpdateBackend] = None
        self._redis_client: Any = None
        self._worker: Any = None
        self.llm_hosts: dict = {}

    def _interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """Credentials and roles, then the per-client limits (`cloud_router.limits`)."""
        return [*super()._interceptors(), *limits_interceptors(self.settings)]

    async def _open(self, server: grpc.aio.Server) -> RouterMetrics:
        settings = self.settings
        check_hosts_a_model(settings)
        metrics = self.metrics = RouterMetrics(settings.router_id)
        checks = self._updates = UpdateService(
            public_key_path=settings.update_public_key, check_uploads=settings.update_check_uploads,
            agent_ttl_s=settings.update_agent_ttl_s, agent_record_ttl_s=settings.update_agent_record_ttl_s,
            max_agents=settings.update_max_agents, max_chunk_bytes=settings.max_message_bytes - 1024,
            store_dir=settings.update_store_dir, announce_memory=not settings.update_state_in_redis)
        updates: UpdateBackend = checks  # the state in this process, or (below) in Redis with `checks` checking uploads
        if settings.redis_url:
            from cloud_router.redis_connection import connect, redact_url

            self._redis_client = await connect(settings.redis_url, startup_wait_s=settings.redis_startup_wait_s)
            if settings.update_state_in_redis:
                from cloud_router.redis_updates import RedisUpdateService

                updates = self._updates = RedisUpdateService(checks, self._redis_client, RedisKeys(settings.redis_prefix),
                                                             where=redact_url(settings.redis_url))
        router = self.router = build_router(settings, self._redis_client, on_batch=metrics.observe_batch)
        metrics.watch(router)
        await router.start()
        if self._redis_client is not None and settings.role in ("all", "worker"):
            self._worker = build_worker(settings, router, self._redis_client, on_batch=metrics.observe_batch)
            await self._worker.start()
        self.llm_hosts = await load_llm_hosts(settings)
        servicer = CloudRouterServicer(router, settings, metrics, updates)
        servicer.llm_hosts, servicer.llm_default_max_new_tokens = self.llm_hosts, settings.llm_max_new_tokens
        pb_grpc.add_CloudRouterServicer_to_server(servicer, server)
        add_kserve_servicer(server, RouterKServeBackend(router, settings, metrics), metrics)
        return metrics

    async def _serving(self) -> None:
        assert self.router is not None
        log.info("cloud router %s (%s) serving %s on port %d, scheduler: %s", self.settings.router_id, self.settings.role,
                 sorted(self.router.models) + sorted(self.llm_hosts), self.port,
                 "Redis" if self._redis_client is not None else "in-memory")
        if not self.router.models:
            log.info("no classifier bundle (model_dirs empty): Infer and KServe answer NOT_FOUND")

    async def _close(self) -> None:
        for host in self.llm_hosts.values():
            await host.close()
        if self._updates is not None:
            await self._updates.aclose()  # no RPC is left to change the state: write it once more, then let go of the store
        if self.router is not None:
            await self.router.stop()
        if self._worker is not None:
            await self._worker.stop(grace_s=self.settings.shutdown_grace_s)
        if self._redis_client is not None:
            from cloud_router.redis_connection import close_quietly

            await close_quietly(self._redis_client)


def run(settings: RouterSettings) -> None:
    """`edgecascade cloud run`: serve until SIGTERM or SIGINT, then drain."""
    run_on_loop(run_until_signal(RouterDaemon(settings)), settings.event_loop)
