"""Cloud pressure: how loaded a model's queue is, 0 (idle) to 1 (saturated).

Pressure compares the queue with the measured capacity of the workers behind it:

    expected_wait_s = queue_depth / capacity_rows_per_s
    pressure = max(queue_depth / max_queue, expected_wait_s / saturation_wait_s,
                   oldest_age_s / saturation_wait_s), clipped to [0, 1]

so 1 means "new work would wait `saturation_wait_s` or more" (or the queue is full). Routers
publish it per model; edge agents receive it in heartbeats and lower their deferral threshold
within the policy's bounds, then stop deferring at saturation.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Optional


def pressure_of(*, queue_depth: int, oldest_age_s: float, capacity_rps: Optional[float], max_queue: int,
                saturation_wait_s: float) -> float:
    shares = [queue_depth / max_queue, oldest_age_s / saturation_wait_s]
    if capacity_rps:
        shares.append(queue_depth / capacity_rps / saturation_wait_s)
    return float(min(1.0, max(0.0, *shares)))


class CapacityMeter:
    """Rows per second of model time, as an exponentially weighted average over batches.

    Measured under load (full batches) this is the throughput a worker sustains; at low load it
    underestimates, which only matters when the queue is short anyway.
    """

    def __init__(self, alpha: float = 0.2) -> None:
        self.alpha = alpha
        self.rows_per_s: Optional[float] = None

    def record(self, rows: int, busy_s: float) -> None:
        if rows <= 0 or busy_s <= 0:
            return
        sample = rows / busy_s
        self.rows_per_s = sample if self.rows_per_s is None else (1 - self.alpha) * self.rows_per_s + self.alpha * sample


@dataclass
class PressureReading:
    """One model's load, as published under `RedisKeys.pressure(model)`."""

    model: str
    pressure: float
    queue_depth: int
    oldest_age_ms: float
    capacity_rps: Optional[float]
    workers: int
    measured_unix_s: float
    router_id: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> "PressureReading":
        return cls(**json.loads(raw))

    @classmethod
    def idle(cls, model: str) -> "PressureReading":
        return cls(model, 0.0, 0, 0.0, None, 0, time.time())
