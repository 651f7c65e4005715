"""`CloudLink`, the edge's side of the cloud call, against a real router in this process: each
way the call can fail gives its fallback reason and moves the breaker as it should."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from edge_agent.breaker import CLOSED, OPEN, CircuitBreaker
from edge_agent.cloud_link import CloudLink, CloudUnavailable
from edgecascade.processes import InProcessDaemon, free_port
from tests.helpers.bundles import CONFIDENT, UNSURE, make_softmax_bundle


@pytest.fixture(scope="module")
def routers(tmp_path_factory):
    """A quick router, one whose batcher waits 2 s, and one with a budget of one deferral."""
    tmp = tmp_path_factory.mktemp("cloud_link")
    cloud = str(make_softmax_bundle(tmp / "cloud", name="toy-cloud", scale=10.0, permute=True))
    with InProcessDaemon("cloud", {"model_dirs": [cloud], "max_delay_ms": 1.0}, tmp, name="quick") as quick, \
            InProcessDaemon("cloud", {"model_dirs": [cloud], "max_delay_ms": 2000.0, "max_batch_size": 64}, tmp,
                            name="slow") as slow, \
            InProcessDaemon("cloud", {"model_dirs": [cloud], "cloud_budget_agent_rps": 0.01, "cloud_budget_burst_s": 100.0},
                            tmp, name="budget") as budget:
        yield {"quick": quick.target, "slow": slow.target, "budget": budget.target}


def call(target: str, payload=UNSURE, *, timeout_s: float = 2.0, breaker: CircuitBreaker | None = None,
         agent_id: str = "a1", times: int = 1):
    """(answers or reasons, breaker) after `times` calls through one link."""
    breaker = breaker or CircuitBreaker(failure_threshold=2, cooldown_s=60.0)

    async def main():
        link = CloudLink(target, breaker=breaker, max_message_bytes=1 << 20, agent_id=agent_id)
        outcomes = []
        try:
            for i in range(times):
                try:
                    outcomes.append(await link.infer(payload, timeout_s=timeout_s, request_id=f"r{i}"))
                except CloudUnavailable as exc:
                    outcomes.append(exc.reason)
        finally:
            await link.close()
        return outcomes

    return asyncio.run(main()), breaker


def test_an_answer_keeps_the_breaker_closed(routers):
    (response,), breaker = call(routers["quick"])
    assert response.label_name == "b" and response.model_name == "toy-cloud"
    assert breaker.state == CLOSED


def test_no_time_left_asks_nobody_and_leaves_the_breaker_alone(routers):
    (reason,), breaker = call(routers["quick"], timeout_s=0.0)
    assert reason == "deadline" and breaker.state == CLOSED


def test_a_slow_cloud_is_a_deadline_failure(routers):
    reasons, breaker = call(routers["slow"], timeout_s=0.2, times=2)
    assert reasons == ["deadline", "deadline"] and breaker.state == OPEN


def test_an_unreachable_cloud_opens_the_breaker_then_no_call_is_made(routers):
    reasons, breaker = call(f"127.0.0.1:{free_port()}", timeout_s=1.0, times=3)
    assert set(reasons[:2]) <= {"cloud_unavailable", "deadline"}     # refused at once, or no connection in time
    assert reasons[2] == "breaker_open" and breaker.state == OPEN


def test_a_refused_request_is_not_the_clouds_fault(routers):
    reasons, breaker = call(routers["quick"], np.zeros(5, np.float32), times=3)
    assert reasons == ["cloud_error_invalid_argument"] * 3 and breaker.state == CLOSED


def test_a_spent_budget_is_a_fallback_that_does_not_count_against_the_cloud(routers):
    reasons, breaker = call(routers["budget"], CONFIDENT, agent_id="budgeted", times=3)
    assert not isinstance(reasons[0], str)          # the one deferral the budget allows
    assert reasons[1:] == ["cloud_budget", "cloud_budget"] and breaker.state == CLOSED


def test_an_open_breaker_refuses_at_once(routers):
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=60.0)
    breaker.record_failure()
    (reason,), _ = call(routers["quick"], breaker=breaker)
    assert reason == "breaker_open"
