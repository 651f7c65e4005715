"""The router's update store and rollout state: one rollout per model (the latest
published), the payloads agents download chunk by chunk, and what each agent reported.

In memory only, or, with `store_dir` (setting `update_store_dir`), also on disk through
`UpdateStore`, reloaded and checked again at start (docs/model_updates.md, "Router side").
State changes reach the disk through a `StateWriter` (group commit, in a worker thread): a
poll or report only schedules its write; the servicer answers a report, or a poll that gets an
offer, once it is durable (`durable`); a publish starts its rollout once the state naming it is.

The agent records are bounded (cloud_router/agent_records.py): a record expires once its agent
has been silent for `agent_record_ttl_s` (counting from this router's start at the earliest, so a
restart gives stored records that long again), and beyond `max_agents` records a new agent is
refused. Expired records go at most once a second on a poll or report, and before every status.

The router is a relay, not a trust anchor: agents verify every manifest and byte again. It
still checks uploads (manifest fields, expiry, payload length and hashes; the signature
when it has the public key), so an operator sees a broken package at publish time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

from cloud_router.agent_records import PRUNE_INTERVAL_S, canaries_in_progress, is_expired, refusal_log, too_many_agents
from cloud_router.rollout import OFFERED, AgentRecord, PublishedUpdate, Rollout, is_recent
from cloud_router.state_writer import StateWriter
from cloud_router.update_store import StoredRollout, StoredState, UpdateStore
from shared.delta.chunks import chunk_of, verify_payload
from shared.delta.manifest import Manifest, SignedManifest, parse_manifest
from shared.delta.signing import load_public_key, verify_signature
from shared.errors import BadManifestError, CorruptPatchError, EdgecascadeError, ExpiredUpdateError, InvalidInputError, UnavailableError, UpdateNotFoundError, echoed
from shared.update_states import ACTIVE, AGENT_STATES, HEALTH_WINDOW_REASON, HEALTHY, supersedes

log = logging.getLogger(__name__)


def update_id_of(signed_manifest: bytes, payload: bytes) -> str:
    """A published update's id: 16 hex digits of the SHA-256 of its envelope and payload (so
    the same manifest uploaded again with other bytes is a new update)."""
    digest = hashlib.sha256(signed_manifest)
    digest.update(hashlib.sha256(payload).digest())
    return digest.hexdigest()[:16]


class UpdateBackend(Protocol):
    """What the update RPCs (`cloud_router.update_servicer`) and the daemon call: an
    `UpdateService` (state in this process) or a `RedisUpdateService` (state in Redis,
    `cloud_router/redis_updates.py`)."""

    def read_manifest(self, signed_manifest: bytes) -> Manifest: ...
    async def publish_off_loop(self, signed_manifest: bytes, payload: bytes, canary_percent: float) -> PublishedUpdate: ...
    async def poll(self, agent_id: str, model_name: str, model_version: int) -> Optional[PublishedUpdate]: ...
    async def fetch_chunk(self, update_id: str, index: int) -> bytes: ...
    async def take_report(self, agent_id: str, **report: Any) -> None: ...
    async def rollout_status(self, model_name: str = "") -> tuple[list[Rollout], list[AgentRecord]]: ...
    async def aclose(self) -> None: ...


class UpdateService:
    def __init__(self, *, public_key_path: Optional[Path] = None, check_uploads: bool = True,
                 agent_ttl_s: float = 120.0, max_payload_bytes: int = 1 << 30, max_chunk_bytes: int = 8 << 20,
                 store_dir: Optional[Path] = None, announce_memory: bool = True,
                 agent_record_ttl_s: Optional[float] = 86_400.0, max_agents: Optional[int] = 10_000,
                 clock: Callable[[], float] = time.time) -> None:
        """`agent_record_ttl_s` / `max_agents` None: records never expire / no limit (the scratch
        service of `RedisUpdateService`, which applies both itself)."""
        self.public_key = load_public_key(public_key_path) if public_key_path else None
        self.check_uploads = check_uploads
        self.agent_ttl_s = agent_ttl_s
        self.agent_record_ttl_s = agent_record_ttl_s
        self.max_agents = max_agents
        self.clock = clock
        self._started_s = clock()  # records restored from the store count as seen now at the latest
        self._pruned_s = float("-inf")
        self.refusals = refusal_log()
        self.max_payload_bytes = max_payload_bytes
        self.max_chunk_bytes = max_chunk_bytes
        self.rollouts: dict[str, Rollout] = {}
        self.agents: dict[str, AgentRecord] = {}
        self._publishing = asyncio.Lock()
        self.store = UpdateStore(store_dir) if store_dir is not None else None
        self._writer: Optional[StateWriter] = None
        if self.store is None:
            if announce_memory:
                log.info("published model updates and rollout state live in memory only (update_store_dir is not set): "
                         "a restart loses them")
        else:
            self._restore()
            self._writer = StateWriter(self._snapshot, self._save_snapshot, where=str(self.store.directory))

    def close(self) -> None:
        """Release the store directory (a process that exits releases it too)."""
        if self.store is not None:
            self.store.close()

    async def aclose(self) -> None:
        """Write what is not written yet (once), then release the store directory."""
        if self._writer is not None:
            await self._writer.close()
        self.close()

    async def durable(self) -> None:
        """Return once every state change so far is in the store (at once without a store).
        UnavailableError when the write failed (the next write tries again)."""
        if self._writer is not None:
            await self._writer.durable()

    # --- publishing ---------------------------------------------------------------------------

    def read_manifest(self, signed_manifest: bytes) -> Manifest:
        """The manifest of an upload's first message, checked as far as the router can."""
        manifest = self.manifest_of(signed_manifest)
        if manifest.payload_size > self.max_payload_bytes:
            raise InvalidInputError(f"payload of {manifest.payload_size} bytes is above the router's limit of {self.max_payload_bytes}")
        if manifest.chunk_size > self.max_chunk_bytes:
            raise InvalidInputError(f"chunk_size {manifest.chunk_size} is above the router's limit of {self.max_chunk_bytes} "
                                    "(a chunk must fit one gRPC message)")
        if self.check_uploads and _expired(manifest):
            raise ExpiredUpdateError(f"manifest for {manifest.model_name!r} v{manifest.version} has already expired")
        return manifest

    def manifest_of(self, signed_manifest: bytes) -> Manifest:
        """Parse an envelope; its signature is checked when uploads are and the key is known. No expiry check."""
        signed = SignedManifest.from_bytes(signed_manifest)
        if self.check_uploads and self.public_key is not None:
            verify_signature(self.public_key, signed.manifest_bytes, signed.signature)
        return parse_manifest(signed.manifest_bytes)

    def publish(self, signed_manifest: bytes, payload: bytes, canary_percent: float) -> PublishedUpdate:
        """Store an update and start its rollout; it replaces the model's previous rollout. All in
        the calling thread (tests, tools); the router uses `publish_off_loop`."""
        rollout = self.prepare_rollout(signed_manifest, payload, canary_percent)
        if self._writer is not None:
            try:
                self._writer.write_blocking(lambda: self._snapshot(rollout))
            except OSError as exc:
                raise self._not_stored(rollout, exc) from None
        return self.start_rollout(rollout)

    async def publish_off_loop(self, signed_manifest: bytes, payload: bytes, canary_percent: float) -> PublishedUpdate:
        """`publish`, with the checks and file writes in worker threads so serving goes on. One
        publish at a time, so a replaced update's files are never deleted under another publish.
        With a store, the rollout starts (is offered) only once the state naming it is durable."""
        async with self._publishing:
            rollout = await asyncio.to_thread(self.prepare_rollout, signed_manifest, payload, canary_percent)
            if self._writer is None:
                return self.start_rollout(rollout)
            try:
                return await self._writer.write_now(lambda: self._snapshot(rollout), lambda: self.start_rollout(rollout))
            except OSError as exc:
                raise self._not_stored(rollout, exc) from None

    def prepare_rollout(self, signed_manifest: bytes, payload: bytes, canary_percent: float) -> Rollout:
        """Check an upload and, with a store, write its files; the rollout is not started yet
        (this touches no shared state, so it may run in a worker thread)."""
        if not 0.0 <= canary_percent <= 100.0:
            raise InvalidInputError(f"canary_percent must be within 0..100, got {canary_percent}")
        manifest = self.read_manifest(signed_manifest)
        if self.check_uploads:
            verify_payload(manifest, payload)
        update_id = update_id_of(signed_manifest, payload)
        if self.store is not None:
            try:
                self.store.save_update(update_id, signed_manifest, payload)
                payload = self.store.map_payload(update_id)  # served from the file from now on
            except OSError as exc:
                raise UnavailableError(f"could not store update {update_id} in {self.store.directory}: {exc}") from None
        return Rollout(PublishedUpdate(update_id, signed_manifest, manifest, payload, time.time()), canary_percent)

    def start_rollout(self, rollout: Rollout) -> PublishedUpdate:
        """Make `rollout` its model's current one (with a store, once the state naming it is
        durable); the files of the update it replaces are deleted."""
        update, manifest = rollout.update, rollout.update.manifest
        replaced = self.rollouts.get(manifest.model_name)
        self.rollouts[manifest.model_name] = rollout
        if self.store is not None and replaced is not None and replaced.update_id != update.update_id:
            self.store.delete_update(replaced.update_id)
        log.info("published update %s: %s v%d%s, %d payload bytes, canary %g%%", update.update_id, manifest.model_name,
                 manifest.version, " (rollback)" if manifest.rollback else "", update.payload_bytes, rollout.canary_percent)
        return update

    # --- what the RPCs call (the same calls as `RedisUpdateService`) ---------------------------

    async def poll(self, agent_id: str, model_name: str, model_version: int) -> Optional[PublishedUpdate]:
        """`notice`; an offer is durable (with a store) before it is returned: the agent acts on
        it, so a restarted router must know the offer and a new canary. Any other change a poll
        made (a new agent, a health window's end) is written soon, unwaited."""
        update = self.notice(agent_id, model_name, model_version)
        if update is not None:
            await self.durable()
        return update

    async def fetch_chunk(self, update_id: str, index: int) -> bytes:
        return self.chunk(update_id, index)

    async def take_report(self, agent_id: str, **report: Any) -> None:
        """`report`, answered once durable (with a store), so the agent may forget it;
        UnavailableError when it could not be written, and the agent sends it again."""
        self.report(agent_id, **report)
        await self.durable()

    async def rollout_status(self, model_name: str = "") -> tuple[list[Rollout], list[AgentRecord]]:
        return self.status(model_name)

    # --- what agents call ---------------------------------------------------------------------

    def notice(self, agent_id: str, model_name: str, model_version: int) -> Optional[PublishedUpdate]:
        """The update `agent_id` should take now, if any (and remember the agent)."""
        if not agent_id or not model_name:
            raise InvalidInputError("an update notice request needs agent_id and model_name")
        now = self.clock()
        self._prune_if_due(now)
        record = self.agents.get(agent_id)
        before = self._durable_view(record)
        record = record or self._new_record(agent_id)
        record.model_name, record.active_version, record.last_seen_unix_s = model_name, model_version, now
        if record.state == ACTIVE:
            self._end_probation(record)
        update = self._offer(record)
        if self._durable_view(record) != before:
            self._changed()
        return update

    def _offer(self, record: AgentRecord) -> Optional[PublishedUpdate]:
        rollout = self.rollouts.get(record.model_name)
        if rollout is None or (self.check_uploads and _expired(rollout.update.manifest)):
            return None
        now = self.clock()
        peers = [r for r in self.agents.values()
                 if r.model_name == record.model_name and is_recent(r, self.agent_ttl_s, now)]
        if not rollout.admit(record, peers):
            return None
        if record.update_id != rollout.update_id:
            record.update_id, record.version, record.state, record.reason, record.message = (
                rollout.update_id, rollout.version, OFFERED, "", "")
        record.canary = record.agent_id in rollout.canary_agents
        return rollout.update

    def chunk(self, update_id: str, index: int) -> bytes:
        update = self._update(update_id)
        return chunk_of(update.payload, update.manifest.chunk_size, index)

    def report(self, agent_id: str, *, model_name: str, update_id: str, version: int, state: str, reason: str = "",
               message: str = "", active_version: int = 0) -> None:
        if not agent_id:
            raise InvalidInputError("an update state report needs agent_id")
        if state not in AGENT_STATES:
            raise InvalidInputError(f"unknown update state {echoed(state)}; use one of {list(AGENT_STATES)}")
        now = self.clock()
        self._prune_if_due(now)
        record = self.agents.get(agent_id)
        before = self._durable_view(record)
        record = record or self._new_record(agent_id)
        record.last_seen_unix_s = now
        if record.update_id == update_id and not supersedes(state, record.state):
            # a late or re-sent report: the record already holds a later state of this update
            log.info("agent %s: update %s (v%d) %s ignored: it already reported %s", agent_id, update_id, version, state,
                     record.state)
            return
        record.model_name = model_name or record.model_name
        record.update_id, record.version, record.state = update_id, version, state
        record.reason, record.message = reason, message[:500]
        record.active_version = active_version or record.active_version
        log.info("agent %s: update %s (v%d) %s%s", agent_id, update_id, version, state, f" ({reason})" if reason else "")
        self._advance_rollout(record)
        if self._durable_view(record) != before:
            self._changed()

    # --- the bounds on the agent records ------------------------------------------------------

    def _new_record(self, agent_id: str) -> AgentRecord:
        """A record for an agent that has none; TooManyAgentsError when `max_agents` are kept."""
        if self.max_agents is not None and len(self.agents) >= self.max_agents:
            raise too_many_agents(agent_id, self.max_agents, self.agent_record_ttl_s or 0.0, self.refusals)
        record = self.agents[agent_id] = AgentRecord(agent_id)
        return record

    def _prune_if_due(self, now: float) -> None:
        if now - self._pruned_s >= PRUNE_INTERVAL_S:
            self.prune(now)

    def prune(self, now: Optional[float] = None) -> int:
        """Drop the records of agents silent for over `agent_record_ttl_s` (the canaries of a
        rollout in its canary phase stay); how many went. The state file follows (a write is scheduled)."""
        if self.agent_record_ttl_s is None:
            return 0
        now = self.clock() if now is None else now
        self._pruned_s = now
        kept = canaries_in_progress(self.rollouts.values())
        gone = [agent_id for agent_id, record in self.agents.items()
                if agent_id not in kept and is_expired(record, self.agent_record_ttl_s, now, self._started_s)]
        for agent_id in gone:
            del self.agents[agent_id]
        if gone:
            log.info("dropped the update records of %d agents silent for over %g s (update_agent_record_ttl_s); "
                     "%d left", len(gone), self.agent_record_ttl_s, len(self.agents))
            self._changed()
        return len(gone)

    def _end_probation(self, record: AgentRecord) -> None:
        """A poll from an agent whose last report was `active`. An agent does not poll during its
        health window, so the window is over and its report of how it ended has not arrived (lost
        when the agent restarted before it could re-send it): the version it polls with says how."""
        kept = record.active_version == record.version
        record.state, record.reason = (HEALTHY, "") if kept else ("rolled_back", HEALTH_WINDOW_REASON)
        record.message = f"taken from the agent's poll on v{record.active_version}; its own report did not arrive"
        log.warning("agent %s: update %s (v%d) %s: %s", record.agent_id, record.update_id, record.version, record.state,
                    record.message)
        self._advance_rollout(record)

    def _advance_rollout(self, record: AgentRecord) -> None:
        """Let `record`'s model's rollout move on after a new state of that agent."""
        rollout = self.rollouts.get(record.model_name)
        if rollout is None:
            return
        phase_before = rollout.phase
        rollout.on_report(record, self.agents)
        if rollout.phase != phase_before:
            log.info("rollout %s of %s v%d: %s -> %s", rollout.update_id, record.model_name, rollout.version,
                     phase_before, rollout.phase)

    # --- status -------------------------------------------------------------------------------

    def status(self, model_name: str = "") -> tuple[list[Rollout], list[AgentRecord]]:
        """The rollouts and agent records, of one model or all; expired records are dropped first."""
        self.prune()
        rollouts = [r for name, r in sorted(self.rollouts.items()) if not model_name or name == model_name]
        agents = [a for _, a in sorted(self.agents.items()) if not model_name or a.model_name == model_name]
        return rollouts, agents

    def _update(self, update_id: str) -> PublishedUpdate:
        for rollout in self.rollouts.values():
            if rollout.update_id == update_id:
                return rollout.update
        raise UpdateNotFoundError(f"no published update {echoed(update_id)} (never published, or replaced by a newer one)")

    # --- the store --------------------------------------------------------------------------------

    def _durable_view(self, record: Optional[AgentRecord]) -> tuple:
        """What a state file holds of `record` and its model's rollout. `last_seen_unix_s` is left
        out: polls refresh it often, so it is written only along with another change."""
        if record is None:
            return ()
        rollout = self.rollouts.get(record.model_name)
        return (dataclasses.replace(record, last_seen_unix_s=0.0),
                (rollout.phase, len(rollout.canary_agents)) if rollout else None)

    def _changed(self) -> None:
        """After a poll or report changed what the state file holds: a write is scheduled (the
        caller does not wait for it; a report's RPC then waits in `durable`)."""
        if self._writer is not None:
            self._writer.mark()

    def _snapshot(self, new_rollout: Optional[Rollout] = None) -> tuple[dict[str, StoredRollout], list[dict]]:
        """What the state file holds, as copies cheap enough to take on the event loop (the
        records as field dicts; `_save_snapshot` serialises them in a worker thread), with
        `new_rollout` in place of its model's current rollout."""
        rollouts = dict(self.rollouts)
        if new_rollout is not None:
            rollouts[new_rollout.update.manifest.model_name] = new_rollout
        return {name: StoredRollout.of(r) for name, r in rollouts.items()}, [record.__dict__.copy() for record in self.agents.values()]

    def _save_snapshot(self, snapshot: tuple[dict[str, StoredRollout], list[dict]]) -> None:
        assert self.store is not None
        rollouts, agents = snapshot
        self.store.save_state(StoredState(rollouts=rollouts, agents=[AgentRecord(**fields) for fields in agents]))

    def _not_stored(self, rollout: Rollout, exc: OSError) -> UnavailableError:
        """A publish whose state could not be written: its rollout does not start, and its files
        are deleted unless the current rollout is the same update."""
        assert self.store is not None
        current = self.rollouts.get(rollout.update.manifest.model_name)
        if current is None or current.update_id != rollout.update_id:
            self.store.delete_update(rollout.update_id)
        return UnavailableError(f"could not store the rollout state in {self.store.directory}: {exc}")

    def _restore(self) -> None:
        """Load the store: every rollout whose update passes its checks again, and the agent records."""
        assert self.store is not None
        state = self.store.load_state()
        for model_name, saved in state.rollouts.items():
            rollout = self._restored_rollout(model_name, saved)
            if rollout is not None:
                self.rollouts[model_name] = rollout
        self.agents = {record.agent_id: record for record in state.agents}
        if self.max_agents is not None and len(self.agents) > self.max_agents:
            log.warning("update store %s holds records of %d agents, above update_max_agents (%d): new agents are "
                        "refused until enough of them expire", self.store.directory, len(self.agents), self.max_agents)
        self.store.remove_unreferenced({r.update_id for r in self.rollouts.values()})
        log.info("update store %s: loaded %d published updates (%s) and %d agent records", self.store.directory,
                 len(self.rollouts), ", ".join(f"{r.update_id}: {name} v{r.version} {r.phase}"
                                               for name, r in sorted(self.rollouts.items())) or "none", len(self.agents))

    def _restored_rollout(self, model_name: str, saved: StoredRollout) -> Optional[Rollout]:
        assert self.store is not None
        try:
            stored = self.store.read_update(saved.update_id)
            manifest = self.manifest_of(stored.signed_manifest)
            if manifest.model_name != model_name:
                raise BadManifestError(f"its manifest is for model {manifest.model_name!r}")
            if self.check_uploads:
                verify_payload(manifest, stored.payload)
            if update_id_of(stored.signed_manifest, stored.payload) != saved.update_id:
                raise CorruptPatchError("its files do not hash to its update id")
        except (OSError, EdgecascadeError) as exc:
            aside = self.store.set_aside(saved.update_id)
            reason = str(exc) if isinstance(exc, EdgecascadeError) else f"{type(exc).__name__}: {exc}"
            log.warning("stored update %s of %s is not offered: %s%s", saved.update_id, model_name, reason,
                        f" (its files are kept in {aside})" if aside else "")
            return None
        update = PublishedUpdate(saved.update_id, stored.signed_manifest, manifest, stored.payload, saved.published_unix_s)
        rollout = saved.rollout_of(update)
        if self.check_uploads and _expired(manifest):
            log.warning("stored update %s of %s v%d expired at %d: shown in status, not offered", saved.update_id,
                        model_name, manifest.version, manifest.expires_at)
        return rollout


def _expired(manifest: Manifest) -> bool:
    return time.time() >= manifest.expires_at
