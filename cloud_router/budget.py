"""The optional cloud budget: deferrals per second, per agent and/or for the whole fleet.

Each budget is a token bucket holding up to `rate * burst_s` tokens (at least 1), refilled at
`rate` per second; a deferral takes one token. With Redis the buckets live in Redis (one Lua
script per check, so every router replica shares them); without, in this process. A router
that cannot reach Redis lets requests through: the work queue is down then anyway.
When a budget is spent the router answers CloudBudgetError and the agent answers locally,
flagged `edge_fallback` / `cloud_budget`.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Optional, Protocol

from redis.exceptions import RedisError

from cloud_router.redis_keys import RedisKeys
from shared.errors import CloudBudgetError

log = logging.getLogger(__name__)

#: KEYS[1] = bucket; ARGV = rate per second, capacity. Returns 1 when a token was taken.
_TAKE_TOKEN_LUA = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + tonumber(now[2]) / 1000
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at_ms')
local tokens = tonumber(state[1]) or capacity
local at_ms = tonumber(state[2]) or now_ms
tokens = math.min(capacity, tokens + math.max(0, now_ms - at_ms) * rate / 1000)
local taken = 0
if tokens >= 1 then
  tokens = tokens - 1
  taken = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at_ms', tostring(now_ms))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate * 1000) + 1000)
return taken
"""


class BucketStore(Protocol):
    async def take(self, key: str, rate_per_s: float, capacity: float) -> bool: ...


class MemoryBuckets:
    """Token buckets in this process (single node). Bounded at `max_keys`: then buckets untouched
    for `forget_idle_s` are dropped, or else the oldest (a dropped bucket starts full again)."""

    def __init__(self, clock=time.monotonic, *, max_keys: int = 10_000, forget_idle_s: float = 60.0) -> None:
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self.max_keys = max_keys
        self.forget_idle_s = forget_idle_s
        self._pruned_s = float("-inf")

    async def take(self, key: str, rate_per_s: float, capacity: float) -> bool:
        now = self._clock()
        if key not in self._buckets and len(self._buckets) >= self.max_keys:
            if now - self._pruned_s >= 1.0:
                self._pruned_s = now
                for old in [k for k, (_, at) in self._buckets.items() if now - at > self.forget_idle_s]:
                    del self._buckets[old]
            if len(self._buckets) >= self.max_keys:  # all busy: the oldest bucket goes (it restarts full)
                del self._buckets[next(iter(self._buckets))]
        tokens, at = self._buckets.get(key, (capacity, now))
        tokens = min(capacity, tokens + (now - at) * rate_per_s)
        taken = tokens >= 1
        self._buckets[key] = (tokens - 1 if taken else tokens, now)
        return taken


class RedisBuckets:
    """Token buckets in Redis, shared by every router replica."""

    def __init__(self, client: Any) -> None:
        self._script = client.register_script(_TAKE_TOKEN_LUA)

    async def take(self, key: str, rate_per_s: float, capacity: float) -> bool:
        try:
            return bool(await self._script(keys=[key], args=[rate_per_s, capacity]))
        except RedisError as exc:
            log.debug("cloud budget not checked (Redis: %s); letting the request through", exc)
            return True


class CloudBudget:
    def __init__(self, store: BucketStore, keys: RedisKeys, *, agent_rps: Optional[float], fleet_rps: Optional[float],
                 burst_s: float = 1.0) -> None:
        self.store = store
        self.keys = keys
        self.agent_rps = agent_rps
        self.fleet_rps = fleet_rps
        self.burst_s = burst_s
        self.refused = 0

    @property
    def enabled(self) -> bool:
        return bool(self.agent_rps or self.fleet_rps)

    def _capacity(self, rate_per_s: float) -> float:
        return max(1.0, rate_per_s * self.burst_s)

    async def check(self, agent_id: str) -> None:
        """Take one deferral from the agent's and the fleet's budget, or CloudBudgetError.
        Requests that name no agent (direct SDK calls) count against the fleet budget only."""
        if self.agent_rps and agent_id:
            if not await self.store.take(self.keys.agent_budget(agent_id), self.agent_rps, self._capacity(self.agent_rps)):
                self.refused += 1
                raise CloudBudgetError(f"cloud budget of agent {agent_id!r} ({self.agent_rps:g} deferrals/s) is spent")
        if self.fleet_rps:
            if not await self.store.take(self.keys.fleet_budget(), self.fleet_rps, self._capacity(self.fleet_rps)):
                self.refused += 1
                raise CloudBudgetError(f"fleet-wide cloud budget ({self.fleet_rps:g} deferrals/s) is spent")
