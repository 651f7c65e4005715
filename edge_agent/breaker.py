"""Circuit breaker for the cloud link.

closed: calls go through; `failure_threshold` consecutive failures open it.
open: calls are refused at once (no request waits on a dead cloud) for `cooldown_s`.
half_open: one trial call goes through; success closes, failure reopens. A trial that ends
with no verdict on the cloud (the caller cancelled it) is abandoned: the breaker stays half-open
and the next call is the trial. Every way a call ends settles it through one of the three
`record_*` methods, so a trial can never stay in flight for ever.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    def __init__(self, failure_threshold: int = 5, cooldown_s: float = 2.0, clock: Callable[[], float] = time.monotonic,
                 on_change: Optional[Callable[[str, str], None]] = None) -> None:
        """`on_change(old, new)` is called on each transition: closed -> open, open -> half_open
        (when the trial is let through), half_open -> open or closed, open -> closed."""
        self.failure_threshold = failure_threshold
        self.on_change = on_change
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False

    @property
    def state(self) -> str:
        if self._state == OPEN and self._clock() - self._opened_at >= self.cooldown_s:
            return HALF_OPEN
        return self._state

    def allow(self) -> bool:
        """May a call go to the cloud now? In half-open, only one trial at a time."""
        state = self.state
        if state == CLOSED:
            return True
        if state == HALF_OPEN and not self._trial_in_flight:
            self._changed(HALF_OPEN)
            self._trial_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        self._changed(CLOSED)
        self._failures = 0
        self._trial_in_flight = False

    def record_abandoned(self) -> None:
        """The call ended without a verdict on the cloud (cancelled by its caller): a half-open
        trial is released so that the next call may try; the state and count do not change."""
        self._trial_in_flight = False

    def record_failure(self) -> None:
        self._failures += 1
        self._trial_in_flight = False
        if self._state == HALF_OPEN or self._failures >= self.failure_threshold:
            self._opened_at = self._clock()
            self._changed(OPEN)

    def _changed(self, new: str) -> None:
        old, self._state = self._state, new
        if old != new and self.on_change is not None:
            self.on_change(old, new)
