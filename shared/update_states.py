"""The states an edge agent reports for one model update, and which may follow which.

The agent's updater reports them in this order; `rolled_back` and `rejected` end an update.
A report can arrive late or twice (the agent re-sends one the router did not take), so both
sides use `supersedes` to keep the newest state of an update and never go back.
"""

from __future__ import annotations

#: States an agent reports for an update, in their order.
AGENT_STATES = ("downloading", "verified", "applied", "active", "healthy", "rolled_back", "rejected")
FAILED_STATES = frozenset({"rejected", "rolled_back"})
ACTIVE = "active"
HEALTHY = "healthy"
#: The reason of a `rolled_back`: the new model failed its health window.
HEALTH_WINDOW_REASON = "health_window"


def supersedes(new: str, old: str) -> bool:
    """Whether state `new` may replace `old` for the same update: the same step again or a later
    one, and nothing after a failed (final) state. A state outside AGENT_STATES (`offered`, or
    none yet) is before all of them."""
    if old in FAILED_STATES:
        return False
    return _rank(new) >= _rank(old)


def _rank(state: str) -> int:
    return AGENT_STATES.index(state) if state in AGENT_STATES else -1
