"""The edge agent's Prometheus metrics: the common ones (`shared.metrics.DaemonMetrics`), plus
deferrals, fallbacks and abstentions by reason, and the breaker, pressure, threshold, deferral ratio and
model version, read from the live `Cascade` when /metrics is scraped."""

from __future__ import annotations

from typing import Optional

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily, Metric

from edge_agent.cascade import Cascade
from shared.metrics import CallbackCollector, DaemonMetrics, RequestOutcome

EDGE_ROUTES = ("edge", "cloud", "edge_fallback", "abstain")
BREAKER_STATES = ("closed", "open", "half_open")


class AgentMetrics(DaemonMetrics):
    """The edge agent's metrics; state is read from the live `Cascade` at scrape time (none
    without a classifier: an agent serving only a language model has the common ones)."""

    def __init__(self, cascade: Optional[Cascade], agent_id: str = "edge") -> None:
        super().__init__("edge_agent", agent_id, EDGE_ROUTES)
        self.deferrals = Counter(
            "edgecascade_deferrals",
            "Requests the edge model deferred to the cloud, by reason (low_confidence, input_too_long, ...).",
            ["reason"],
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "edgecascade_fallbacks",
            "Deferred requests the edge answered itself because the cloud did not, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.abstentions = Counter(
            "edgecascade_abstentions",
            "Requests answered as out of scope (route abstain), by reason (edge_low_confidence, cloud_low_confidence, ...).",
            ["reason"],
            registry=self.registry,
        )
        if cascade is not None:
            CallbackCollector(lambda: _agent_state(cascade), registry=self.registry)

    def record(self, api: str, outcome: RequestOutcome, duration_s: float) -> None:
        super().record(api, outcome, duration_s)
        if outcome.defer_reason and outcome.fallback_reason != "pressure":  # answered locally: never sent
            self._child(self.deferrals, (outcome.defer_reason,)).inc()
        if outcome.fallback_reason:
            self._child(self.fallbacks, (outcome.fallback_reason,)).inc()
        if outcome.abstain_reason:
            self._child(self.abstentions, (outcome.abstain_reason,)).inc()


def _agent_state(cascade: "Cascade") -> list[Metric]:
    model = cascade.active.model
    version = GaugeMetricFamily("edgecascade_model_version", "Version of the model serving now.", labels=["model"])
    version.add_metric([model.name], model.version)
    breaker = GaugeMetricFamily(
        "edgecascade_breaker_state",
        "1 for the cloud circuit breaker's current state, 0 for the others (all 0 without a cloud).",
        labels=["state"],
    )
    current = cascade.cloud.breaker.state if cascade.cloud is not None else None
    for state in BREAKER_STATES:
        breaker.add_metric([state], 1.0 if state == current else 0.0)
    counts = cascade.route_counts
    answered = sum(counts.values())
    # answers the edge gave because of cloud pressure were never sent to the cloud
    deferred = counts.get("cloud", 0) + counts.get("edge_fallback", 0) - cascade.fallback_counts.get("pressure", 0)
    # out-of-scope answers the cloud decided were deferred; those the edge decided were not
    deferred += sum(n for reason, n in cascade.abstain_counts.items() if reason.startswith("cloud_"))
    return [
        version,
        breaker,
        GaugeMetricFamily("edgecascade_cloud_pressure", "Last cloud pressure the agent saw (0 idle, 1 saturated).",
                          value=cascade.pressure),
        GaugeMetricFamily("edgecascade_deferral_threshold", "Deferral threshold in force, after any pressure shift.",
                          value=cascade.current_threshold()),
        GaugeMetricFamily(
            "edgecascade_deferral_ratio",
            "Share of answered requests the edge deferred, since start. For a window use "
            "sum(rate(edgecascade_deferrals_total[5m])) / sum(rate(edgecascade_requests_total{status=\"OK\"}[5m])).",
            value=deferred / answered if answered else 0.0,
        ),
    ]
