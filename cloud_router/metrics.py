"""The cloud router's Prometheus metrics: the common ones (`shared.metrics.DaemonMetrics`),
plus batch sizes and durations by model, and queue depth, pressure and model version, read
from the live `Router` when /metrics is scraped."""

from __future__ import annotations

from typing import Optional

from prometheus_client import Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from cloud_router.router import Router
from shared.metrics import CallbackCollector, DaemonMetrics

ROUTER_ROUTES = ("cloud",)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
BATCH_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class RouterMetrics(DaemonMetrics):
    """The cloud router's metrics; `observe_batch` is the scheduler's `on_batch` callback."""

    def __init__(self, router_id: str = "router") -> None:
        super().__init__("cloud_router", router_id, ROUTER_ROUTES)
        self.batch_size = Histogram(
            "edgecascade_batch_size",
            "Requests per batch the dynamic batcher ran, by model.",
            ["model"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "edgecascade_batch_duration_seconds",
            "Time the model spent on one batch, by model.",
            ["model"],
            buckets=BATCH_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self._router: Optional[Router] = None
        CallbackCollector(self._router_state, registry=self.registry)

    def watch(self, router: Router) -> None:
        """Report this router's queues, pressure and models from now on."""
        self._router = router

    def observe_batch(self, model_name: str, size: int, duration_s: float) -> None:
        self._child(self.batch_size, (model_name,)).observe(size)
        self._child(self.batch_seconds, (model_name,)).observe(duration_s)

    def _router_state(self) -> list[Metric]:
        return [] if self._router is None else _router_state(self._router)


def _router_state(router: "Router") -> list[Metric]:
    depth = GaugeMetricFamily("edgecascade_queue_depth", "Requests waiting for a batch, by model.", labels=["model"])
    pressure = GaugeMetricFamily("edgecascade_pressure", "Pressure published to agents (0 idle, 1 saturated), by model.",
                                 labels=["model"])
    version = GaugeMetricFamily("edgecascade_model_version", "Version of each hosted model.", labels=["model"])
    for name, model in router.models.items():
        depth.add_metric([name], router.scheduler.queue_depth(name))
        pressure.add_metric([name], router.scheduler.pressure(name))
        version.add_metric([name], model.version)
    return [depth, pressure, version]
