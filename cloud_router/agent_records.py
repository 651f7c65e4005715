"""The bounds on the router's per-agent update records (`UpdateService.agents`, or the records
in Redis with `update_state_in_redis`): both keep these rules.

- A record is dropped once its agent has not polled or reported for `record_ttl_s` (setting
  `update_agent_record_ttl_s`); an agent that comes back later is a new agent.
- The canaries of a rollout still in its canary phase are kept, whatever their age: the rollout
  goes on to `full` only once every canary's record says `healthy`.
- At most `max_agents` records (setting `update_max_agents`): beyond it a poll or report from an
  agent without a record is refused (`TooManyAgentsError`, RESOURCE_EXHAUSTED), so made-up agent
  ids cannot grow the table; agents with a record are served as before.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

from cloud_router.rollout import CANARY, AgentRecord
from shared.errors import TooManyAgentsError, echoed
from shared.undecodable_requests import RateLimitedLog

log = logging.getLogger(__name__)

#: The in-memory router looks for expired records at most this often on a poll or report; with
#: Redis, a replica whose records are full does so at most this often.
PRUNE_INTERVAL_S = 1.0

def is_expired(record: AgentRecord, record_ttl_s: float, now_s: float, since_s: float = 0.0) -> bool:
    """Whether `record`'s agent has been silent for over `record_ttl_s` at `now_s`, counting
    from `since_s` at the earliest (a restarted router's start: it did not hear from anyone before)."""
    return now_s - max(record.last_seen_unix_s, since_s) > record_ttl_s


def canaries_in_progress(rollouts: Iterable[Any]) -> set[str]:
    """The agents whose records must stay: canaries of rollouts still in their canary phase
    (`Rollout` or `StoredRollout`)."""
    return {agent for rollout in rollouts if rollout.phase == CANARY for agent in rollout.canary_agents}


def refusal_log() -> RateLimitedLog:
    """Where a service logs the new agents it refuses: one line per 10 s at most."""
    return RateLimitedLog(log, interval_s=10.0)


def too_many_agents(agent_id: str, max_agents: int, record_ttl_s: float, refusals: RateLimitedLog) -> TooManyAgentsError:
    """The error for a new agent when the table is full, logged on `refusals`."""
    refusals.warning("refused the update poll or report of new agent %s: the router keeps update records of %d "
                      "agents already (update_max_agents)", echoed(agent_id), max_agents)
    return TooManyAgentsError(
        f"the router keeps update records of {max_agents} agents, its limit (update_max_agents): new agent "
        f"{echoed(agent_id)} is refused until the records of agents silent for {record_ttl_s:g} s "
        f"(update_agent_record_ttl_s) expire")
