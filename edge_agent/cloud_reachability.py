"""What an operator sees in the agent's log about the cloud: when it becomes unreachable and
when it is back, from the circuit breaker's transitions and the heartbeat's answers.

A change of state is logged once (WARNING when the cloud is lost, INFO when it is back). While
the cloud stays down, the breaker retries every `breaker_cooldown_s` and the heartbeat every
`heartbeat_interval_s`; those repeats are logged at most once per `repeat_interval_s`, with a
count. Nothing here is logged per request.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Optional

from edge_agent.breaker import CLOSED, HALF_OPEN, OPEN

log = logging.getLogger("edge_agent.cloud")

REPEAT_INTERVAL_S = 60.0


class _Repeats:
    """Counts a repeated event and says when it may be logged again."""

    def __init__(self, interval_s: float, clock: Callable[[], float]) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last_s: Optional[float] = None
        self.count = 0

    def reset(self) -> None:
        self._last_s = None
        self.count = 0

    def due(self) -> bool:
        """Count one; True when a line may be logged now (then the count starts again)."""
        self.count += 1
        now = self._clock()
        if self._last_s is not None and now - self._last_s < self.interval_s:
            return False
        self._last_s = now
        return True

    def take(self) -> int:
        count, self.count = self.count, 0
        return count


class BreakerLog:
    """`on_change(old, new)` for `CircuitBreaker`: logs the cloud lost and back."""

    def __init__(self, target: str, *, failure_threshold: int, cooldown_s: float,
                 repeat_interval_s: float = REPEAT_INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.target = target
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._opened_s: Optional[float] = None
        self._first_trial = False
        self._retries = _Repeats(repeat_interval_s, clock)

    def __call__(self, old: str, new: str) -> None:
        if new == OPEN and old == CLOSED:
            self._opened_s = self._clock()
            self._first_trial = True
            self._retries.reset()
            log.warning("cloud %s unreachable: %d consecutive failures opened the circuit breaker; deferred "
                        "requests are answered on the edge (edge_fallback), retrying every %.1f s",
                        self.target, self.failure_threshold, self.cooldown_s)
        elif new == HALF_OPEN:
            if self._first_trial:  # later trials show in the (rate-limited) "still unreachable" lines
                self._first_trial = False
                log.info("cloud %s: breaker half-open, trying one request", self.target)
        elif new == OPEN and old == HALF_OPEN:
            if self._retries.due():
                down_s = self._clock() - (self._opened_s or self._clock())
                log.info("cloud %s still unreachable after %.0f s: the trial request failed, breaker open again "
                         "(%d trial(s) failed since the last such line)", self.target, down_s, self._retries.take())
        elif new == CLOSED:
            down_s = self._clock() - self._opened_s if self._opened_s is not None else 0.0
            self._opened_s = None
            self._retries.reset()
            log.info("cloud %s reachable again: circuit breaker closed after %.1f s; deferring to the cloud",
                     self.target, down_s)


class HeartbeatLog:
    """The heartbeat's answers: first failure, repeats (rate-limited), recovery."""

    def __init__(self, target: str, *, repeat_interval_s: float = REPEAT_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.target = target
        self._clock = clock
        self._failing_since_s: Optional[float] = None
        self._failures = 0
        self._repeats = _Repeats(repeat_interval_s, clock)

    @property
    def failing(self) -> bool:
        return self._failing_since_s is not None

    def failed(self, reason: str) -> None:
        self._failures += 1
        if self._failing_since_s is None:
            self._failing_since_s = self._clock()
            self._repeats.reset()
            self._repeats.due()
            log.warning("heartbeat to cloud %s failing: %s (fleet status and cloud pressure are not updated "
                        "until it answers)", self.target, reason)
        elif self._repeats.due():
            log.info("heartbeat to cloud %s still failing after %.0f s (%d failures): %s", self.target,
                     self._clock() - self._failing_since_s, self._failures, reason)

    def answered(self) -> None:
        if self._failing_since_s is None:
            return
        log.info("heartbeat to cloud %s recovered after %.1f s (%d failed)", self.target,
                 self._clock() - self._failing_since_s, self._failures)
        self._failing_since_s = None
        self._failures = 0
