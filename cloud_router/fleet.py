"""The fleet registry: which edge agents are alive, what they run, how they route.

Agents heartbeat to a router; the router records a `FleetEntry` that expires `ttl_s` after
the last heartbeat, so a silent agent disappears on its own. With Redis every router replica
writes to one registry (JSON entries with a TTL plus a sorted-set index, no SCAN); without,
the registry lives in the router process.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from google.protobuf import json_format

from cloud_router.redis_keys import RedisKeys
from protos import edgecascade_pb2 as pb


class FleetRegistry(Protocol):
    async def record(self, status: pb.AgentStatus, *, router_id: str, ttl_s: float) -> pb.FleetEntry: ...
    async def entries(self) -> list[pb.FleetEntry]: ...


def new_entry(status: pb.AgentStatus, *, router_id: str, ttl_s: float, now_s: float) -> pb.FleetEntry:
    return pb.FleetEntry(agent=status, last_seen_unix_s=now_s, expires_unix_s=now_s + ttl_s, router_id=router_id)


def entry_to_dict(entry: pb.FleetEntry) -> dict[str, Any]:
    """A plain dict for JSON output, counts as integers (proto JSON writes int64 as strings)."""
    row = json_format.MessageToDict(entry, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    for counts in ("route_counts", "fallback_counts"):
        row["agent"][counts] = {k: int(v) for k, v in row["agent"].get(counts, {}).items()}
    return row


def entry_from_json(raw: str | bytes) -> pb.FleetEntry:
    return json_format.Parse(raw, pb.FleetEntry(), ignore_unknown_fields=True)


class MemoryFleetRegistry:
    def __init__(self, clock=time.time, *, prune_interval_s: float = 1.0) -> None:
        self._clock = clock
        self._entries: dict[str, pb.FleetEntry] = {}
        self._prune_interval_s = prune_interval_s
        self._pruned_s = 0.0

    async def record(self, status: pb.AgentStatus, *, router_id: str, ttl_s: float) -> pb.FleetEntry:
        now = self._clock()
        entry = new_entry(status, router_id=router_id, ttl_s=ttl_s, now_s=now)
        self._entries[status.agent_id] = entry
        if now - self._pruned_s >= self._prune_interval_s:  # expired entries leave even if nobody reads the fleet
            self._prune(now)
        return entry

    def _prune(self, now: float) -> None:
        self._pruned_s = now
        for agent_id in [a for a, e in self._entries.items() if e.expires_unix_s <= now]:
            del self._entries[agent_id]

    async def entries(self) -> list[pb.FleetEntry]:
        self._prune(self._clock())
        return sorted(self._entries.values(), key=lambda e: e.agent.agent_id)


class RedisFleetRegistry:
    def __init__(self, client: Any, keys: RedisKeys) -> None:
        self.client = client
        self.keys = keys

    async def record(self, status: pb.AgentStatus, *, router_id: str, ttl_s: float) -> pb.FleetEntry:
        entry = new_entry(status, router_id=router_id, ttl_s=ttl_s, now_s=time.time())
        raw = json_format.MessageToJson(entry, preserving_proto_field_name=True, indent=None)
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.keys.fleet_agent(status.agent_id), raw, px=max(1, int(ttl_s * 1000)))
        pipe.zadd(self.keys.fleet_index(), {status.agent_id: entry.expires_unix_s})
        pipe.zremrangebyscore(self.keys.fleet_index(), "-inf", entry.last_seen_unix_s)   # long-gone agents
        await pipe.execute()
        return entry

    async def entries(self) -> list[pb.FleetEntry]:
        now = time.time()
        index = self.keys.fleet_index()
        await self.client.zremrangebyscore(index, "-inf", now)
        agent_ids = [a.decode() for a in await self.client.zrange(index, 0, -1)]
        if not agent_ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for agent_id in agent_ids:
            pipe.get(self.keys.fleet_agent(agent_id))
        raws = await pipe.execute()
        entries = [entry_from_json(raw) for raw in raws if raw]
        return sorted((e for e in entries if e.expires_unix_s > now), key=lambda e: e.agent.agent_id)
