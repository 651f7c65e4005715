"""Schedulers put cloud work onto models. The router talks only to this interface.

`InMemoryScheduler` (the default, single node) runs one dynamic batcher per model in this
process. A Redis-backed scheduler spreads the same work over replicas (`redis_url`).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol

import numpy as np

from cloud_router.batcher import DynamicBatcher
from cloud_router.pressure import CapacityMeter, pressure_of
from shared.model import Model


class Scheduler(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def submit(self, model: Model, payload: Any, deadline_s: float, priority: int, request_id: str) -> np.ndarray:
        """The model's output row for one request, or a typed error."""
    def queue_depth(self, model_name: str) -> int: ...
    def pressure(self, model_name: str) -> float:
        """0 = idle, 1 = saturated: the queue is full or would take `saturation_wait_s` to drain
        at the measured capacity (cloud_router/pressure.py)."""


class InMemoryScheduler:
    def __init__(self, models: dict[str, Model], *, max_batch_size: int, max_delay_ms: float, max_queue: int,
                 on_batch: Any = None, saturation_wait_s: float = 1.0) -> None:
        self.saturation_wait_s = saturation_wait_s
        self.models = models
        self.capacity = {name: CapacityMeter() for name in models}

        def batch_done(name: str, size: int, busy_s: float) -> None:
            self.capacity[name].record(size, busy_s)
            if on_batch:
                on_batch(name, size, busy_s)

        model_lock = threading.Lock()  # one model computes at a time: they share the node's cores
        self.batchers = {
            name: DynamicBatcher(
                model.predict,
                max_batch_size=max_batch_size,
                max_delay_ms=max_delay_ms,
                max_queue=max_queue,
                model_lock=model_lock,
                on_batch=lambda size, s, name=name: batch_done(name, size, s),
                name=name,
            )
            for name, model in models.items()
        }

    async def start(self) -> None:
        """Start each model's batcher thread, loading the model there if it is not loaded yet:
        torch's OpenMP threads then serve one thread only. (A model loaded on the event loop's
        thread and run on another gets a second OpenMP pool; with more pool threads than cores
        libgomp stops spinning between parallel regions, and a 2-thread MiniLM at batch 1 took
        10 ms instead of 4.5 ms here.)"""
        for name, batcher in self.batchers.items():
            model = self.models[name]
            await batcher.start(prepare=None if model.ready else model.load)

    async def stop(self) -> None:
        for batcher in self.batchers.values():
            await batcher.stop()

    async def submit(self, model: Model, payload: Any, deadline_s: float, priority: int, request_id: str) -> np.ndarray:
        return await self.batchers[model.name].submit(payload, deadline_s, priority)

    def queue_depth(self, model_name: str) -> int:
        return self.batchers[model_name].queue_depth

    def pressure(self, model_name: str) -> float:
        batcher = self.batchers[model_name]
        return pressure_of(queue_depth=batcher.queue_depth, oldest_age_s=batcher.oldest_age_s(time.monotonic()),
                           capacity_rps=self.capacity[model_name].rows_per_s, max_queue=batcher.max_queue,
                           saturation_wait_s=self.saturation_wait_s)
