"""Every Redis key edgecascade uses, under one configurable prefix. Nothing else builds key names.

    {prefix}:work:{model}            stream: deferred requests for one model (consumer group WORK_GROUP)
    {prefix}:dead:{model}            stream: entries a worker could not process, with the reason
    {prefix}:reply:{frontend}        list: replies for one router front end (BLMPOP)
    {prefix}:capacity:{model}        hash: worker id -> "rows_per_s:unix_ms", measured by each worker
    {prefix}:alive:{consumer}        string with a TTL (redis_worker_ttl_ms): one live worker consumer
    {prefix}:pressure:{model}        string (JSON): the model's latest pressure, with a TTL
    {prefix}:budget:agent:{agent}    hash: token bucket of one agent's cloud budget
    {prefix}:budget:fleet            hash: token bucket of the fleet-wide cloud budget
    {prefix}:fleet:agent:{agent}     string (JSON FleetEntry) with a TTL: one live agent
    {prefix}:fleet:index             sorted set: agent id -> expiry (unix s), to list entries without SCAN

Model-update state (setting `update_state_in_redis`, cloud_router/redis_updates.py):

    {prefix}:update:{id}             hash: manifest (the signed envelope), payload_bytes, chunks
    {prefix}:update:{id}:chunk:{i}   string: chunk i of the update's payload (the manifest's chunk_size)
    {prefix}:rollout:{model}         string (JSON StoredRollout): the model's current rollout
    {prefix}:rollouts                set: model names that have a rollout
    {prefix}:update-agent:{agent}    string (JSON AgentRecord): one agent's update record
    {prefix}:update-agents           set: agent ids with an update record

Every scheduling command touches one key, so that layout also works on Redis Cluster without
hash tags. The update state uses multi-key transactions (WATCH/MULTI), so it needs one server
or Sentinel, not Cluster (the settings refuse that).
"""

from __future__ import annotations

from dataclasses import dataclass

#: Consumer group every worker replica joins on every work stream.
WORK_GROUP = "workers"
DEFAULT_PREFIX = "edgecascade"


@dataclass(frozen=True)
class RedisKeys:
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not self.prefix or any(c.isspace() for c in self.prefix):
            raise ValueError(f"Redis key prefix must be non-empty without spaces, got {self.prefix!r}")

    def work_stream(self, model: str) -> str:
        return f"{self.prefix}:work:{model}"

    def worker_alive(self, consumer: str) -> str:
        return f"{self.prefix}:alive:{consumer}"

    def dead_letter_stream(self, model: str) -> str:
        return f"{self.prefix}:dead:{model}"

    def reply_list(self, frontend_id: str) -> str:
        return f"{self.prefix}:reply:{frontend_id}"

    def capacity(self, model: str) -> str:
        return f"{self.prefix}:capacity:{model}"

    def pressure(self, model: str) -> str:
        return f"{self.prefix}:pressure:{model}"

    def agent_budget(self, agent_id: str) -> str:
        return f"{self.prefix}:budget:agent:{agent_id}"

    def fleet_budget(self) -> str:
        return f"{self.prefix}:budget:fleet"

    def fleet_agent(self, agent_id: str) -> str:
        return f"{self.prefix}:fleet:agent:{agent_id}"

    def fleet_index(self) -> str:
        return f"{self.prefix}:fleet:index"

    def update(self, update_id: str) -> str:
        return f"{self.prefix}:update:{update_id}"

    def update_chunk(self, update_id: str, index: int) -> str:
        return f"{self.prefix}:update:{update_id}:chunk:{index}"

    def rollout(self, model: str) -> str:
        return f"{self.prefix}:rollout:{model}"

    def rollout_index(self) -> str:
        return f"{self.prefix}:rollouts"

    def update_agent(self, agent_id: str) -> str:
        return f"{self.prefix}:update-agent:{agent_id}"

    def update_agent_index(self) -> str:
        return f"{self.prefix}:update-agents"
