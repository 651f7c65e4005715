"""What the Prometheus metrics of both daemons have in common: one registry per daemon, served
over HTTP on `metrics_port`. Each daemon adds its own (`edge_agent.metrics.AgentMetrics`,
`cloud_router.metrics.RouterMetrics`).

Per request, one count and one histogram bucket are updated in plain dicts (`RequestStats`,
through `DaemonMetrics.track` or `@counted`). State (queue depth, pressure, breaker, model
version, deferral ratio) is read from the live objects when /metrics is scraped, so it costs
nothing on the hot path.

    edge agent                                   cloud router
    edgecascade_requests_total{api,route,status} edgecascade_requests_total{api,route,status}
    edgecascade_request_duration_seconds{api,route}  (same)
    edgecascade_deferrals_total{reason}          edgecascade_batch_size{model}
    edgecascade_fallbacks_total{reason}          edgecascade_batch_duration_seconds{model}
    edgecascade_abstentions_total{reason}
    edgecascade_deferral_ratio                   edgecascade_queue_depth{model}
    edgecascade_deferral_threshold               edgecascade_pressure{model}
    edgecascade_breaker_state{state}             edgecascade_model_version{model}
    edgecascade_cloud_pressure                   edgecascade_update_state{state}
    edgecascade_model_version{model}             edgecascade_daemon_info{daemon,id}
    edgecascade_update_state{state}
    edgecascade_daemon_info{daemon,id}

Each registry also carries the standard process_* and python_info metrics.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, Iterator, Optional, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from shared.errors import ConfigError, EdgecascadeError
from shared.proto_convert import ROUTE_FROM_PROTO

log = logging.getLogger(__name__)

#: Labels of `edgecascade_requests_total`.
API_EDGECASCADE, API_KSERVE = "edgecascade", "kserve"
#: The route of a request that failed before any model answered it.
NO_ROUTE = "none"
#: What `set_update_state` accepts: the states of an edge model update, in their usual order.
UPDATE_STATES = ("downloading", "verified", "applied", "active", "rolled_back", "rejected")

REQUEST_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class RequestOutcome:
    """What `track` records for one request; the caller fills in the route once it is known."""

    route: str = NO_ROUTE
    status: str = "OK"
    defer_reason: str = ""
    fallback_reason: str = ""
    abstain_reason: str = ""


class DaemonMetrics:
    """What both daemons record: requests by API, route and status, latency, update state."""

    def __init__(self, daemon: str, daemon_id: str, routes: Iterable[str]) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        Info("edgecascade_daemon", "Which daemon this is.", registry=self.registry).info(
            {"daemon": daemon, "id": daemon_id}
        )
        self.request_stats = RequestStats(REQUEST_SECONDS_BUCKETS, registry=self.registry)
        self.update_state = Gauge(
            "edgecascade_update_state",
            "1 for the model-update state this daemon is in, 0 for the others.",
            ["state"],
            registry=self.registry,
        )
        self.update_target_version = Gauge(
            "edgecascade_update_target_version",
            "Model version the current update state refers to (0 when none).",
            registry=self.registry,
        )
        self._children: dict[tuple, object] = {}
        for api in (API_EDGECASCADE, API_KSERVE):
            for route in routes:
                self.request_stats.declare(api, route, "OK")
        self.set_update_state("active")

    def _child(self, metric: Counter | Histogram, labels: tuple[str, ...]):
        """The labelled child, cached: cheaper than `labels()` on every request."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def record(self, api: str, outcome: RequestOutcome, duration_s: float) -> None:
        self.request_stats.record(api, outcome.route, outcome.status, duration_s)

    @contextmanager
    def track(self, api: str) -> Iterator[RequestOutcome]:
        """Count one request and time it. Set `outcome.route` (and reasons) when it is answered;
        an exception sets the status to its gRPC code name and is re-raised."""
        outcome = RequestOutcome()
        started = time.perf_counter()
        try:
            yield outcome
        except BaseException as exc:
            outcome.status = _status_of(exc)
            raise
        finally:
            if outcome.status != "OK":
                outcome.route = NO_ROUTE
            self.record(api, outcome, time.perf_counter() - started)

    @contextmanager
    def refusals(self, api: str) -> Iterator[None]:
        """Count a request refused as a whole (bad tensor, unknown model) if the block raises;
        a block that passes records nothing (its rows are counted by `track`)."""
        started = time.perf_counter()
        try:
            yield
        except EdgecascadeError as exc:
            self.record(api, RequestOutcome(status=exc.code.name), time.perf_counter() - started)
            raise

    def set_update_state(self, state: str, version: Optional[int] = None) -> None:
        """Show the model-update state (one of UPDATE_STATES), and the version it concerns."""
        if state not in UPDATE_STATES:
            raise EdgecascadeError(f"unknown update state {state!r}; use one of {list(UPDATE_STATES)}")
        for name in UPDATE_STATES:
            self.update_state.labels(name).set(1.0 if name == state else 0.0)
        self.update_target_version.set(float(version or 0))


def _status_of(exc: BaseException) -> str:
    """The status name a failed request is counted under."""
    if isinstance(exc, EdgecascadeError):
        return exc.code.name
    if isinstance(exc, asyncio.CancelledError):
        return "CANCELLED"
    return "INTERNAL"


class RequestStats(Collector):
    """`edgecascade_requests_total{api,route,status}` and `edgecascade_request_duration_seconds
    {api,route}`, kept in plain dicts and turned into metric families when /metrics is scraped.

    Same families as a prometheus_client Counter and Histogram, at a fraction of the cost per
    request (no locks, no child objects): `record` is one dict update and one bisect. It is
    called from the event loop only; a scrape (another thread) reads copies."""

    def __init__(self, buckets: Iterable[float], registry: CollectorRegistry) -> None:
        self.bounds = tuple(float(b) for b in buckets)
        self._counts: dict[tuple[str, str, str], int] = {}
        self._histograms: dict[tuple[str, str], list] = {}   # (api, route) -> [bucket counts..., +Inf, sum]
        registry.register(self)

    def declare(self, api: str, route: str, status: str) -> None:
        """Show the series at zero before the first request."""
        self._counts.setdefault((api, route, status), 0)
        self._histograms.setdefault((api, route), [0] * (len(self.bounds) + 1) + [0.0])

    def record(self, api: str, route: str, status: str, duration_s: float) -> None:
        key = (api, route, status)
        self._counts[key] = self._counts.get(key, 0) + 1
        histogram = self._histograms.get((api, route))
        if histogram is None:
            histogram = self._histograms[(api, route)] = [0] * (len(self.bounds) + 1) + [0.0]
        histogram[bisect.bisect_left(self.bounds, duration_s)] += 1
        histogram[-1] += duration_s

    def collect(self) -> Iterable[Metric]:
        counts = CounterMetricFamily(
            "edgecascade_requests",
            "Inference requests finished, by API (edgecascade, kserve), route that answered "
            "(edge, cloud, edge_fallback; none when it failed first) and gRPC status. "
            "A KServe request counts once per batch row.",
            labels=["api", "route", "status"],
        )
        for labels, value in list(self._counts.items()):
            counts.add_metric(list(labels), value)
        seconds = HistogramMetricFamily(
            "edgecascade_request_duration_seconds",
            "Time from receiving a request to its answer, by API and route.",
            labels=["api", "route"],
        )
        for labels, histogram in list(self._histograms.items()):
            histogram = list(histogram)
            cumulative, buckets = 0, []
            for bound, count in zip((*self.bounds, float("inf")), histogram[:-1]):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            seconds.add_metric(list(labels), buckets, histogram[-1])
        return [counts, seconds]


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def counted(api: str) -> Callable[[F], F]:
    """Decorate an async servicer method answering an edgecascade.v1 `InferResponse`: count and
    time each call in `self.metrics`, with the route and reasons the response reports. Put it
    under `@grpc_errors`, so it sees the typed error before it becomes a gRPC status."""

    def decorate(method: F) -> F:
        @functools.wraps(method)
        async def wrapper(self: Any, request: Any, context: Any) -> Any:
            # `track` written out: this runs on every request, and a generator-based context
            # manager costs several microseconds more.
            started = time.perf_counter()
            try:
                response = await method(self, request, context)
            except BaseException as exc:
                self.metrics.record(api, RequestOutcome(status=_status_of(exc)), time.perf_counter() - started)
                raise
            self.metrics.record(api, RequestOutcome(ROUTE_FROM_PROTO.get(response.served_by, NO_ROUTE), "OK",
                                                    response.defer_reason, response.fallback_reason,
                                                    response.abstain_reason),
                                time.perf_counter() - started)
            return response

        return wrapper  # type: ignore[return-value]

    return decorate


class CallbackCollector(Collector):
    """A collector whose samples come from a function called at scrape time."""

    def __init__(self, collect: Callable[[], list[Metric]], registry: CollectorRegistry) -> None:
        self._collect = collect
        registry.register(self)

    def collect(self) -> Iterable[Metric]:
        try:
            return self._collect()
        except Exception:
            log.exception("collecting daemon state for /metrics failed")
            return []


class MetricsEndpoint:
    """The /metrics HTTP server of one daemon: a daemon thread that lives as long as the
    process (the daemons never close it); `close()` stops it earlier."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise ConfigError(f"setting 'metrics_port': cannot serve /metrics on {host}:{port}: {exc.strerror or exc}") from None
        self.host = host
        self.port = int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def listen_host(listen: str) -> str:
    """The host part of a gRPC `listen` address ("[::]:50051" -> "::", ":50051" -> "0.0.0.0")."""
    host = listen.rsplit(":", 1)[0] if ":" in listen else listen
    host = host.strip("[]")
    return host or "0.0.0.0"


def serve_metrics(metrics: DaemonMetrics, listen: str, metrics_port: Optional[int]) -> Optional[MetricsEndpoint]:
    """Start /metrics on the gRPC listen host and `metrics_port`; None when the port is unset."""
    if metrics_port is None:
        return None
    endpoint = MetricsEndpoint(metrics.registry, listen_host(listen), metrics_port)
    log.info("Prometheus metrics on http://%s:%d/metrics", endpoint.host, endpoint.port)
    return endpoint
