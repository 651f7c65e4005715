"""One staged rollout of a published update: who gets the notice, and when the rest follow.

Phases:
- `canary`: only canary agents get the notice. An agent is a canary when its bucket
  (SHA-256 of update id and agent id, mapped to [0, 100)) is below `canary_percent`. When no
  agent seen recently falls below it, the one with the lowest bucket is the canary, so a
  small fleet still gets one. Once every canary agent reports `healthy`, the phase is `full`;
  the first canary that reports `rejected` or `rolled_back` halts the rollout.
- `full`: every agent of the model gets the notice.
- `halted`: nobody gets it any more (agents already updated keep it; push a rollback).

`canary_percent` 0 (or 100) starts in `full`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Iterable, Optional

from shared.delta.manifest import Manifest
from shared.update_states import FAILED_STATES, HEALTHY

CANARY, FULL, HALTED = "canary", "full", "halted"
OFFERED = "offered"


@dataclass
class PublishedUpdate:
    update_id: str
    signed_manifest: bytes
    manifest: Manifest
    payload: bytes
    published_unix_s: float
    payload_size: Optional[int] = None
    """The payload's length where `payload` is not held (update state in Redis: its chunks are)."""

    @property
    def payload_bytes(self) -> int:
        return len(self.payload) if self.payload_size is None else self.payload_size


@dataclass
class AgentRecord:
    """What the router knows of one agent's updates (from its polls and reports)."""

    agent_id: str
    model_name: str = ""
    active_version: int = 0
    last_seen_unix_s: float = 0.0
    update_id: str = ""
    version: int = 0
    state: str = ""
    reason: str = ""
    message: str = ""
    canary: bool = False


def canary_bucket(update_id: str, agent_id: str) -> float:
    """A stable number in [0, 100) per (update, agent)."""
    digest = hashlib.sha256(f"{update_id}/{agent_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100.0


@dataclass
class Rollout:
    update: PublishedUpdate
    canary_percent: float
    phase: str = FULL
    canary_agents: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.phase = CANARY if 0.0 < self.canary_percent < 100.0 else FULL

    @property
    def update_id(self) -> str:
        return self.update.update_id

    @property
    def version(self) -> int:
        return self.update.manifest.version

    def admit(self, agent: AgentRecord, peers: Iterable[AgentRecord]) -> bool:
        """Whether `agent` (serving `agent.active_version`) gets the notice now; records a new canary."""
        if self.phase == HALTED or agent.active_version == self.version:
            return False
        if agent.update_id == self.update_id and agent.state in FAILED_STATES:
            return False  # it refused or rolled this one back: never offer it again
        if self.phase == FULL or agent.agent_id in self.canary_agents:
            return True
        bucket = canary_bucket(self.update_id, agent.agent_id)
        if bucket < self.canary_percent or (
            not self.canary_agents
            and not any(canary_bucket(self.update_id, p.agent_id) < bucket for p in peers if p.agent_id != agent.agent_id)
        ):
            self.canary_agents.add(agent.agent_id)
            return True
        return False

    def on_report(self, agent: AgentRecord, records: dict[str, AgentRecord]) -> None:
        """Move the phase on after a canary agent reported a state for this update."""
        if self.phase != CANARY or agent.agent_id not in self.canary_agents or agent.update_id != self.update_id:
            return
        if agent.state in FAILED_STATES:
            self.phase = HALTED
            return
        canaries = [records.get(a) for a in self.canary_agents]
        if all(r is not None and r.update_id == self.update_id and r.state == HEALTHY for r in canaries):
            self.phase = FULL


def is_recent(record: AgentRecord, ttl_s: float, now: Optional[float] = None) -> bool:
    return (time.time() if now is None else now) - record.last_seen_unix_s <= ttl_s
