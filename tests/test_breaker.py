"""The cloud link's circuit breaker on its own, with a clock the test moves."""

from __future__ import annotations

from edge_agent.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def test_opens_after_the_threshold_of_consecutive_failures():
    breaker = CircuitBreaker(failure_threshold=3, cooldown_s=2.0, clock=Clock())
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state == CLOSED
    breaker.record_failure()
    assert breaker.state == OPEN and not breaker.allow()


def test_a_success_resets_the_failure_count():
    breaker = CircuitBreaker(failure_threshold=2, cooldown_s=2.0, clock=Clock())
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state == CLOSED


def test_half_open_lets_one_trial_through_and_its_success_closes():
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=2.0, clock=clock)
    breaker.record_failure()
    clock.now_s += 1.9
    assert breaker.state == OPEN and not breaker.allow()
    clock.now_s += 0.1
    assert breaker.state == HALF_OPEN
    assert breaker.allow()                 # the trial
    assert not breaker.allow()             # only one at a time
    breaker.record_success()
    assert breaker.state == CLOSED and breaker.allow() and breaker.allow()


def test_a_failed_trial_reopens_for_a_whole_cooldown():
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=5, cooldown_s=2.0, clock=clock)
    for _ in range(5):
        breaker.record_failure()
    clock.now_s += 2.0
    assert breaker.allow()
    breaker.record_failure()               # one failure in half-open is enough
    assert breaker.state == OPEN and not breaker.allow()
    clock.now_s += 1.0
    assert not breaker.allow()
    clock.now_s += 1.0
    assert breaker.allow()
