"""Model-update state in Redis (setting `update_state_in_redis`), shared by every router replica
on one Redis and `redis_prefix`, so an agent's poll, download or report, or an operator's
publish or status, may reach any replica (docs/model_updates.md, "Several replicas").

Keys (cloud_router/redis_keys.py): each published update's signed manifest (a hash) and its
payload, one key per chunk of the manifest's `chunk_size`, so a FetchPatchChunk reads one key;
each model's rollout (JSON `StoredRollout`); each agent's record (JSON `AgentRecord`).

Every change is one optimistic transaction (WATCH, read, MULTI, write, EXEC; again when a
watched key changed meanwhile). A poll or report watches the agent's record, its model's
rollout and the rollout's canary records, then runs the same logic as the in-memory router
(`UpdateService.notice` / `report`, `Rollout.admit` / `on_report`) on what it read, and writes
what that changed. So two replicas taking the reports of two canaries at once cannot both miss
that all canaries are healthy, and a report never moves a record back (`supersedes`). A report
is acknowledged once its EXEC succeeded: it is in Redis. A publish writes the update's keys, its
rollout (replacing the model's previous one) and deletes the replaced update's keys in one
transaction.

The agent records are bounded as in memory (cloud_router/agent_records.py). A poll or report of
an agent with no record counts the index (watched, so two replicas cannot both take the last
place) and is refused at `max_agents`; the replica then drops expired records (at most once a
second) and tries once more. Expired records are dropped in one transaction that watches them
(one that polled meanwhile stays) on every status and at most every `prune_interval_s` on a poll
or report, by any replica. Redis outlives router restarts, so here silence counts from the
agent's last poll or report only.

Redis unreachable: these calls raise UnavailableError (UNAVAILABLE); agents keep their reports
and send them again. Nothing here is on the inference path.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
from typing import Any, AsyncIterator, Awaitable, Callable, Optional, TypeVar

from redis.exceptions import RedisError, WatchError

from cloud_router.agent_records import PRUNE_INTERVAL_S, canaries_in_progress, is_expired, too_many_agents
from cloud_router.redis_keys import RedisKeys
from cloud_router.rollout import CANARY, AgentRecord, PublishedUpdate, Rollout
from cloud_router.update_store import AGENT_RECORD, StoredRollout
from cloud_router.updates import UpdateService
from shared.delta.manifest import Manifest
from shared.errors import InvalidInputError, TooManyAgentsError, UnavailableError, UpdateNotFoundError, UpdateRejectedError, echoed

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Tries of one transaction before giving up (UNAVAILABLE; the agent tries again) when other
#: replicas keep changing the same keys.
MAX_TRIES = 50


class RedisUpdateService:
    """The update RPCs' calls (as `UpdateService`'s `poll`, `fetch_chunk`, `take_report`,
    `rollout_status`, `publish_off_loop`) on state kept in Redis. `checks` (an `UpdateService`
    without a store) checks uploads and holds the settings; its own dicts stay unused."""

    def __init__(self, checks: UpdateService, client: Any, keys: RedisKeys, *, where: str,
                 prune_interval_s: float = 60.0) -> None:
        self.checks, self.client, self.keys, self.where = checks, client, keys, where
        self.prune_interval_s = prune_interval_s
        self._pruned_s = checks.clock()  # the last prune of this replica (any kind)
        self._pruned_when_full_s = float("-inf")
        self._updates: dict[str, tuple[bytes, Manifest, int]] = {}  # update id -> (envelope, manifest, payload bytes)
        self._unusable: set[str] = set()  # stored updates whose manifest fails this replica's checks (logged once)
        log.info("published model updates, rollouts and agent records live in Redis at %s (prefix %r), shared by "
                 "every replica using it", where, keys.prefix)

    def read_manifest(self, signed_manifest: bytes) -> Manifest:
        return self.checks.read_manifest(signed_manifest)

    async def aclose(self) -> None:
        """Nothing is held back: every change is in Redis once its call returned."""

    # --- publishing ---------------------------------------------------------------------------

    async def publish_off_loop(self, signed_manifest: bytes, payload: bytes, canary_percent: float) -> PublishedUpdate:
        """Check the upload (in a worker thread), then store it and its rollout in one transaction,
        replacing the model's previous rollout and deleting that update's keys."""
        rollout = await asyncio.to_thread(self.checks.prepare_rollout, signed_manifest, payload, canary_percent)
        update, manifest = rollout.update, rollout.update.manifest
        model, size = manifest.model_name, manifest.chunk_size
        chunks = max(1, math.ceil(len(payload) / size))
        stored = StoredRollout.of(rollout)
        rollout_key = self.keys.rollout(model)

        async def store(pipe: Any) -> None:
            await pipe.watch(rollout_key)
            old = await pipe.get(rollout_key)
            old_id = StoredRollout.model_validate_json(old).update_id if old else ""
            old_keys: list[str] = []
            if old_id and old_id != update.update_id:
                old_chunks = int(await pipe.hget(self.keys.update(old_id), "chunks") or 0)
                old_keys = [self.keys.update(old_id)] + [self.keys.update_chunk(old_id, i) for i in range(old_chunks)]
            pipe.multi()
            for index in range(chunks):
                pipe.set(self.keys.update_chunk(update.update_id, index), payload[index * size:(index + 1) * size])
            pipe.hset(self.keys.update(update.update_id),
                      mapping={"manifest": signed_manifest, "payload_bytes": len(payload), "chunks": chunks})
            pipe.set(rollout_key, stored.model_dump_json())
            pipe.sadd(self.keys.rollout_index(), model)
            if old_keys:
                pipe.delete(*old_keys)

        await self._transaction("publish", store)
        log.info("published update %s: %s v%d%s, %d payload bytes in %d chunks, canary %g%% (in Redis)", update.update_id,
                 model, manifest.version, " (rollback)" if manifest.rollback else "", len(payload), chunks, canary_percent)
        return update

    # --- what agents call ---------------------------------------------------------------------

    async def poll(self, agent_id: str, model_name: str, model_version: int) -> Optional[PublishedUpdate]:
        if not agent_id or not model_name:
            raise InvalidInputError("an update notice request needs agent_id and model_name")
        return await self._bounded_change(agent_id, model_name, lambda s: s.notice(agent_id, model_name, model_version))

    async def take_report(self, agent_id: str, **report: Any) -> None:
        """Store a report (`UpdateService.report`'s checks and ordering); returns once it is in Redis."""
        if not agent_id:
            raise InvalidInputError("an update state report needs agent_id")
        await self._bounded_change(agent_id, report.get("model_name", ""), lambda s: s.report(agent_id, **report))

    async def fetch_chunk(self, update_id: str, index: int) -> bytes:
        async with self._reachable("chunk"):
            data = await self.client.get(self.keys.update_chunk(update_id, index))
            if data is not None:
                return data
            payload_bytes, chunks = await self.client.hmget(self.keys.update(update_id), ["payload_bytes", "chunks"])
        if payload_bytes is None:
            raise UpdateNotFoundError(f"no published update {echoed(update_id)} (never published, or replaced by a newer one)")
        raise InvalidInputError(f"chunk {index} is beyond a {int(payload_bytes)}-byte payload in {int(chunks)} chunks")

    # --- status -------------------------------------------------------------------------------

    async def rollout_status(self, model_name: str = "") -> tuple[list[Rollout], list[AgentRecord]]:
        """Expired agent records are dropped first."""
        await self.prune()
        async with self._reachable("status"):
            models = sorted(m.decode() for m in await self.client.smembers(self.keys.rollout_index()))
            models = [m for m in models if not model_name or m == model_name]
            rollouts = []
            for raw in await self.client.mget([self.keys.rollout(m) for m in models]) if models else []:
                rollout = await self._rollout_from(self.client, raw) if raw else None
                if rollout is not None:
                    rollouts.append(rollout)
            agents = await self._all_agents(self.client)
        return rollouts, [a for a in agents if not model_name or a.model_name == model_name]

    # --- the bounds on the agent records ------------------------------------------------------

    async def _bounded_change(self, agent_id: str, model_name: str, act: Callable[[UpdateService], T]) -> T:
        """`_change`, after a prune when one is due; a new agent refused because the records are
        full gets one more try after a prune (at most one such prune a second per replica)."""
        now = self.checks.clock()
        if now - self._pruned_s >= self.prune_interval_s:
            await self.prune()
        try:
            return await self._change(agent_id, model_name, act)
        except TooManyAgentsError:
            if now - self._pruned_when_full_s < PRUNE_INTERVAL_S:
                raise
            self._pruned_when_full_s = now
            if not await self.prune():
                raise
        return await self._change(agent_id, model_name, act)

    async def prune(self) -> int:
        """Delete the records of agents silent for over `agent_record_ttl_s` (the canaries of a
        rollout in its canary phase stay) and their index entries; how many went."""
        ttl_s = self.checks.agent_record_ttl_s
        if ttl_s is None:
            return 0
        now = self._pruned_s = self.checks.clock()
        index = self.keys.update_agent_index()

        def expired(agent_ids: list[str], values: list[Optional[bytes]]) -> list[str]:
            return [a for a, v in zip(agent_ids, values) if v is None or is_expired(AGENT_RECORD.validate_json(v), ttl_s, now)]

        async with self._reachable("prune"):
            agent_ids = sorted(a.decode() for a in await self.client.smembers(index))
            candidates = expired(agent_ids, await self.client.mget([self.keys.update_agent(a) for a in agent_ids])) \
                if agent_ids else []
            if candidates:
                kept = canaries_in_progress(await self._stored_rollouts(self.client))
                candidates = [a for a in candidates if a not in kept]
        if not candidates:
            return 0

        async def drop(pipe: Any) -> int:
            keys = [self.keys.update_agent(a) for a in candidates]
            await pipe.watch(*keys)  # an agent that polls meanwhile keeps its record
            gone = expired(candidates, await pipe.mget(keys))
            pipe.multi()
            if gone:
                pipe.delete(*[self.keys.update_agent(a) for a in gone])
                pipe.srem(index, *gone)
            return len(gone)

        dropped = await self._transaction("prune", drop)
        if dropped:
            log.info("dropped the update records of %d agents silent for over %g s (update_agent_record_ttl_s) from "
                     "Redis", dropped, ttl_s)
        return dropped

    # --- one transaction ----------------------------------------------------------------------

    async def _change(self, agent_id: str, model_name: str, act: Callable[[UpdateService], T]) -> T:
        """Run `act` on a scratch `UpdateService` holding what Redis holds of the agent, its
        model's rollout and the records that rollout's logic reads, then write what it changed,
        all under WATCH."""
        agent_key = self.keys.update_agent(agent_id)

        async def work(pipe: Any) -> T:
            await pipe.watch(agent_key)
            raw = await pipe.get(agent_key)
            record = AGENT_RECORD.validate_json(raw) if raw else None
            max_agents = self.checks.max_agents
            if record is None and max_agents is not None:  # a new agent: is there room?
                await pipe.watch(self.keys.update_agent_index())
                if await pipe.scard(self.keys.update_agent_index()) >= max_agents:
                    raise too_many_agents(agent_id, max_agents, self.checks.agent_record_ttl_s or 0.0, self.checks.refusals)
            model = model_name or (record.model_name if record else "")
            records = {agent_id: record} if record else {}
            rollout = None
            if model:
                await pipe.watch(self.keys.rollout(model))
                raw_rollout = await pipe.get(self.keys.rollout(model))
                rollout = await self._rollout_from(pipe, raw_rollout) if raw_rollout else None
            if rollout is not None and rollout.phase == CANARY:
                if rollout.canary_agents:  # on_report reads every canary's record: a change to one retries
                    canaries = sorted(rollout.canary_agents - {agent_id})
                    if canaries:
                        await pipe.watch(*[self.keys.update_agent(a) for a in canaries])
                        for value in await pipe.mget([self.keys.update_agent(a) for a in canaries]):
                            if value:
                                other = AGENT_RECORD.validate_json(value)
                                records[other.agent_id] = other
                else:  # the first canary is picked among the recent peers
                    for other in await self._all_agents(pipe):
                        records.setdefault(other.agent_id, other)
            scratch = UpdateService(check_uploads=self.checks.check_uploads, agent_ttl_s=self.checks.agent_ttl_s,
                                    announce_memory=False, agent_record_ttl_s=None, max_agents=None,
                                    clock=self.checks.clock)
            scratch.agents = {a: dataclasses.replace(r) for a, r in records.items()}
            if rollout is not None:
                scratch.rollouts[model] = rollout
            phase_before, canaries_before = (rollout.phase, set(rollout.canary_agents)) if rollout else (None, None)
            result = act(scratch)
            pipe.multi()
            for other_id, after in scratch.agents.items():
                if records.get(other_id) != after:
                    pipe.set(self.keys.update_agent(other_id), AGENT_RECORD.dump_json(after))
            if agent_id not in records:
                pipe.sadd(self.keys.update_agent_index(), agent_id)
            if rollout is not None and (rollout.phase, rollout.canary_agents) != (phase_before, canaries_before):
                pipe.set(self.keys.rollout(model), StoredRollout.of(rollout).model_dump_json())
            return result

        return await self._transaction("update state", work)

    async def _transaction(self, what: str, work: Callable[[Any], Awaitable[T]]) -> T:
        async with self._reachable(what):
            for _ in range(MAX_TRIES):
                async with self.client.pipeline(transaction=True) as pipe:
                    try:
                        result = await work(pipe)
                        await pipe.execute()
                        return result
                    except WatchError:
                        continue
        raise UnavailableError(f"the update state in Redis at {self.where} changed under {MAX_TRIES} tries of one "
                               f"{what}; try again")

    @contextlib.asynccontextmanager
    async def _reachable(self, what: str) -> AsyncIterator[None]:
        try:
            yield
        except (RedisError, OSError) as exc:
            raise UnavailableError(f"the router keeps update state in Redis at {self.where}, which did not answer "
                                   f"the {what} ({type(exc).__name__}: {exc}); try again") from None

    # --- reading ------------------------------------------------------------------------------

    async def _rollout_from(self, conn: Any, raw: bytes) -> Optional[Rollout]:
        stored = StoredRollout.model_validate_json(raw)
        known = self._updates.get(stored.update_id)
        if known is None:
            signed, payload_bytes = await conn.hmget(self.keys.update(stored.update_id), ["manifest", "payload_bytes"])
            if signed is None:
                log.warning("rollout of update %s names no stored update in Redis: not offered", stored.update_id)
                return None
            try:
                manifest = self.checks.manifest_of(signed)
            except UpdateRejectedError as exc:
                if stored.update_id not in self._unusable:
                    self._unusable.add(stored.update_id)
                    log.error("stored update %s in Redis does not check out on this replica (%s: %s); this replica "
                              "does not offer it (is its update_public_key the one the other replicas use?)",
                              stored.update_id, exc.reason, exc)
                return None
            known = (signed, manifest, int(payload_bytes))
            self._updates[stored.update_id] = known
        signed, manifest, payload_bytes = known
        update = PublishedUpdate(stored.update_id, signed, manifest, b"", stored.published_unix_s, payload_size=payload_bytes)
        return stored.rollout_of(update)

    async def _stored_rollouts(self, conn: Any) -> list[StoredRollout]:
        models = sorted(m.decode() for m in await conn.smembers(self.keys.rollout_index()))
        raws = await conn.mget([self.keys.rollout(m) for m in models]) if models else []
        return [StoredRollout.model_validate_json(raw) for raw in raws if raw]

    async def _all_agents(self, conn: Any) -> list[AgentRecord]:
        ids = sorted(a.decode() for a in await conn.smembers(self.keys.update_agent_index()))
        if not ids:
            return []
        values = await conn.mget([self.keys.update_agent(a) for a in ids])
        return [AGENT_RECORD.validate_json(v) for v in values if v]
