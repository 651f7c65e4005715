"""The agent's log tells an operator when the cloud is lost and back, once per change, never per
request; the router says which model it loads before it serves."""

from __future__ import annotations

import logging
import time

from edge_agent.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from edge_agent.cloud_reachability import BreakerLog, HeartbeatLog
from edgecascade import Client
from edgecascade.processes import Daemon
from tests.helpers.bundles import UNSURE


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "edge_agent.cloud"]


def test_breaker_transitions_are_logged_once_and_repeats_rate_limited(caplog):
    caplog.set_level(logging.INFO, logger="edge_agent.cloud")
    clock = Clock()
    breaker = CircuitBreaker(3, 2.0, clock=clock,
                             on_change=BreakerLog("cloud:1", failure_threshold=3, cooldown_s=2.0, repeat_interval_s=60.0,
                                                  clock=clock))
    for _ in range(10):  # a stream of failing requests: one line when the breaker opens
        if breaker.allow():
            breaker.record_failure()
    assert breaker.state == OPEN
    lines = messages(caplog)
    assert len(lines) == 1 and "cloud cloud:1 unreachable" in lines[0]
    for _ in range(100):  # 200 s of outage: a trial every 2 s, a line at most every 60 s
        clock.now += 2.0
        assert breaker.allow()
        breaker.record_failure()
    lines = messages(caplog)
    assert 2 <= len(lines) <= 1 + 2 * 4, lines
    assert any("still unreachable" in line for line in lines)
    clock.now += 2.0
    assert breaker.allow() and breaker.state == HALF_OPEN
    breaker.record_success()
    assert breaker.state == CLOSED
    assert "reachable again" in messages(caplog)[-1] and caplog.records[-1].levelno == logging.INFO


def test_heartbeat_failing_and_recovered(caplog):
    caplog.set_level(logging.INFO, logger="edge_agent.cloud")
    clock = Clock()
    beats = HeartbeatLog("cloud:1", repeat_interval_s=60.0, clock=clock)
    beats.answered()
    assert messages(caplog) == []
    for _ in range(60):  # two minutes of failing heartbeats every 2 s
        beats.failed("UNAVAILABLE connection refused")
        clock.now += 2.0
    lines = messages(caplog)
    assert "heartbeat to cloud cloud:1 failing: UNAVAILABLE" in lines[0]
    assert 2 <= len(lines) <= 3, lines
    beats.answered()
    assert "recovered after 120.0 s (60 failed)" in messages(caplog)[-1]
    beats.answered()
    assert sum("recovered" in line for line in messages(caplog)) == 1


def test_agent_log_shows_cloud_lost_and_back_and_router_shows_loading(tmp_path, bundles):
    cloud_settings = {"model_dirs": [str(bundles["cloud"])], "max_delay_ms": 2.0}
    cloud = Daemon("cloud", cloud_settings, tmp_path, name="cloud").start()
    router_log = cloud.logs()
    assert router_log.index("loading model toy-cloud v1") < router_log.index("serving")
    edge_settings = {"bundle_dir": str(bundles["edge"]), "cloud_target": cloud.target, "breaker_failure_threshold": 2,
                     "breaker_cooldown_s": 0.3, "heartbeat_interval_s": 0.2}
    with Daemon("edge", edge_settings, tmp_path, name="edge") as edge, Client(edge.target, timeout_s=2.0) as client:
        assert client.infer(UNSURE).served_by == "cloud"
        cloud.stop()
        routes = [client.infer(UNSURE).served_by for _ in range(200)]
        assert set(routes) == {"edge_fallback"}
        time.sleep(0.5)  # a few failing heartbeats
        cloud = Daemon("cloud", {**cloud_settings, "listen": cloud.target}, tmp_path, name="cloud").start()
        deadline = time.monotonic() + 20
        while client.infer(UNSURE).served_by != "cloud":
            assert time.monotonic() < deadline, "the agent never used the cloud again"
            time.sleep(0.1)
        deadline = time.monotonic() + 10
        while "heartbeat to cloud" not in edge.logs() or "recovered" not in edge.logs():
            assert time.monotonic() < deadline, edge.logs()
            time.sleep(0.1)
        log = edge.logs()
    cloud.stop()
    assert log.count("unreachable: 2 consecutive failures opened the circuit breaker") == 1, log
    assert log.count("reachable again: circuit breaker closed") == 1, log
    assert log.count("heartbeat to cloud") >= 2
    cloud_lines = [line for line in log.splitlines() if "edge_agent.cloud" in line]
    assert len(cloud_lines) < 20, "logged per request, not per change"
