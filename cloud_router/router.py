"""The transport-independent cloud router: resolve the model, validate, schedule, answer."""

from __future__ import annotations

import logging
import time
from typing import Any, Optional

from cloud_router.budget import CloudBudget
from cloud_router.fleet import FleetRegistry, MemoryFleetRegistry
from cloud_router.scheduler import Scheduler
from protos import edgecascade_pb2 as pb
from shared.errors import ModelNotFoundError, UnavailableError, echoed
from shared.model import Model
from shared.prediction import Prediction

log = logging.getLogger(__name__)


class Router:
    def __init__(self, models: dict[str, Model], scheduler: Scheduler, router_id: str = "router", *,
                 budget: Optional[CloudBudget] = None, fleet: Optional[FleetRegistry] = None, fleet_ttl_s: float = 10.0,
                 serves_requests: bool = True, load_models: bool = True) -> None:
        """`serves_requests=False`: a worker-only replica (Infer refused). `load_models=False`: a
        front end that only validates inputs and never computes (weights stay on disk). `models`
        may be empty on a router that serves only language models: every classifier request is
        then NOT_FOUND, and pressure is 0."""
        self.models = models
        self.default_model = next(iter(models), "")
        self.scheduler = scheduler
        self.router_id = router_id
        self.budget = budget
        self.fleet: FleetRegistry = fleet if fleet is not None else MemoryFleetRegistry()
        self.fleet_ttl_s = fleet_ttl_s
        self.serves_requests = serves_requests
        self.load_models = load_models
        self.ready = False

    def resolve(self, name: str) -> Model:
        if not self.models:
            raise ModelNotFoundError("this router hosts no classifier (set model_dirs)")
        model = self.models.get(name or self.default_model)
        if model is None:
            raise ModelNotFoundError(f"unknown model {echoed(name)}; this router hosts {sorted(self.models)}")
        return model

    async def start(self) -> None:
        started = time.perf_counter()
        to_load = [model for model in self.models.values() if self.load_models and not model.ready]
        for model in to_load:
            log.info("loading model %s v%s", model.name, model.version)
        await self.scheduler.start()  # the in-memory scheduler loads its models on their own threads
        for model in self.models.values():
            if self.load_models and not model.ready:
                model.load()
        if to_load:
            log.info("loaded %s in %.1f s", ", ".join(m.name for m in to_load), time.perf_counter() - started)
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        await self.scheduler.stop()

    async def infer(self, model_name: str, payload: Any, deadline_s: float, priority: int = 0,
                    request_id: str = "", agent_id: str = "") -> tuple[Prediction, float]:
        """(prediction, cloud_ms) for one request; `agent_id` names the deferring agent (budget)."""
        model = self.resolve(model_name)
        if not self.ready:
            raise UnavailableError("router is not ready")
        if not self.serves_requests:
            raise UnavailableError(f"router {self.router_id} is a worker (role 'worker'); send requests to a front end")
        payload = model.check_input(payload)
        if self.budget is not None:
            await self.budget.check(agent_id)
        started = time.perf_counter()
        probs = await self.scheduler.submit(model, payload, deadline_s, priority, request_id)
        cloud_ms = (time.perf_counter() - started) * 1000.0
        return Prediction.from_probs(probs, model.labels, model.name, model.version), cloud_ms

    def pressure(self, model_name: str = "") -> float:
        if not self.models:
            return 0.0
        return self.scheduler.pressure(self.resolve(model_name).name)

    async def heartbeat(self, status: pb.AgentStatus, interval_s: float) -> tuple[float, int]:
        """Record an agent in the fleet registry; (pressure, queue depth) of its cloud model.
        The entry lives `fleet_ttl_s`, or three heartbeat intervals if the agent is slower.
        A router without a classifier records the agent and answers (0.0, 0)."""
        name = self.resolve(status.cloud_model).name if self.models else None
        ttl_s = max(self.fleet_ttl_s, 3.0 * interval_s)
        try:
            await self.fleet.record(status, router_id=self.router_id, ttl_s=ttl_s)
        except Exception as exc:
            log.warning("fleet registry: could not record agent %s: %s", status.agent_id, exc)
        if name is None:
            return 0.0, 0
        return self.scheduler.pressure(name), self.scheduler.queue_depth(name)
