"""The transport-independent cloud router: resolve the model, validate, schedule, answer."""

from __future__ import annotations

import logging
import time
from typing import Any

from cloud_router.scheduler import Scheduler
from shared.errors import ModelNotFoundError, UnavailableError
from shared.model import Model
from shared.prediction import Prediction

log = logging.getLogger(__name__)


class Router:
    def __init__(self, models: dict[str, Model], scheduler: Scheduler, router_id: str = "router") -> None:
        if not models:
            raise ValueError("a router needs at least one model")
        self.models = models
        self.default_model = next(iter(models))
        self.scheduler = scheduler
        self.router_id = router_id
        self.ready = False

    def resolve(self, name: str) -> Model:
        model = self.models.get(name or self.default_model)
        if model is None:
            raise ModelNotFoundError(f"unknown model {name!r}; this router hosts {sorted(self.models)}")
        return model

    async def start(self) -> None:
        for model in self.models.values():
            if not model.ready:
                model.load()
        await self.scheduler.start()
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        await self.scheduler.stop()

    async def infer(self, model_name: str, payload: Any, deadline_s: float, priority: int = 0,
                    request_id: str = "") -> tuple[Prediction, float]:
        """(prediction, cloud_ms) for one request."""
        model = self.resolve(model_name)
        if not self.ready:
            raise UnavailableError("router is not ready")
        payload = model.check_input(payload)
        started = time.perf_counter()
        probs = await self.scheduler.submit(model, payload, deadline_s, priority, request_id)
        cloud_ms = (time.perf_counter() - started) * 1000.0
        return Prediction.from_probs(probs, model.labels, model.name, model.version), cloud_ms

    def pressure(self, model_name: str = "") -> float:
        return self.scheduler.pressure(self.resolve(model_name).name)
