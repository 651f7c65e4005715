"""The router's update store and rollout state, in memory: one rollout per model (the latest
published), the payloads agents download chunk by chunk, and what each agent reported.

The router is a relay, not a trust anchor: agents verify every manifest and byte again. It
still checks uploads (manifest fields, expiry, payload length and hashes; the signature
when it has the public key), so an operator sees a broken package at publish time.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Optional

from cloud_router.rollout import AGENT_STATES, OFFERED, AgentRecord, PublishedUpdate, Rollout, is_recent
from shared.delta.chunks import chunk_of, verify_payload
from shared.delta.manifest import Manifest, SignedManifest, parse_manifest, verify_manifest
from shared.delta.signing import load_public_key
from shared.errors import ExpiredUpdateError, InvalidInputError, UpdateNotFoundError

log = logging.getLogger(__name__)


def update_id_of(signed_manifest: bytes, payload: bytes) -> str:
    """A published update's id: 16 hex digits of the SHA-256 of its envelope and payload (so
    the same manifest uploaded again with other bytes is a new update)."""
    digest = hashlib.sha256(signed_manifest)
    digest.update(hashlib.sha256(payload).digest())
    return digest.hexdigest()[:16]


class UpdateService:
    def __init__(self, *, public_key_path: Optional[Path] = None, check_uploads: bool = True,
                 agent_ttl_s: float = 120.0, max_payload_bytes: int = 1 << 30, max_chunk_bytes: int = 8 << 20) -> None:
        self.public_key = load_public_key(public_key_path) if public_key_path else None
        self.check_uploads = check_uploads
        self.agent_ttl_s = agent_ttl_s
        self.max_payload_bytes = max_payload_bytes
        self.max_chunk_bytes = max_chunk_bytes
        self.rollouts: dict[str, Rollout] = {}
        self.agents: dict[str, AgentRecord] = {}

    # --- publishing ---------------------------------------------------------------------------

    def read_manifest(self, signed_manifest: bytes) -> Manifest:
        """The manifest of an upload's first message, checked as far as the router can."""
        signed = SignedManifest.from_bytes(signed_manifest)
        if self.check_uploads and self.public_key is not None:
            manifest = verify_manifest(signed.manifest_bytes, signed.signature, self.public_key,
                                       active_version=None, now=time.time())
        else:
            manifest = parse_manifest(signed.manifest_bytes)
        if manifest.payload_size > self.max_payload_bytes:
            raise InvalidInputError(f"payload of {manifest.payload_size} bytes is above the router's limit of {self.max_payload_bytes}")
        if manifest.chunk_size > self.max_chunk_bytes:
            raise InvalidInputError(f"chunk_size {manifest.chunk_size} is above the router's limit of {self.max_chunk_bytes} "
                                    "(a chunk must fit one gRPC message)")
        if self.check_uploads and time.time() >= manifest.expires_at:
            raise ExpiredUpdateError(f"manifest for {manifest.model_name!r} v{manifest.version} has already expired")
        return manifest

    def publish(self, signed_manifest: bytes, payload: bytes, canary_percent: float) -> PublishedUpdate:
        """Store an update and start its rollout; it replaces the model's previous rollout."""
        if not 0.0 <= canary_percent <= 100.0:
            raise InvalidInputError(f"canary_percent must be within 0..100, got {canary_percent}")
        manifest = self.read_manifest(signed_manifest)
        if self.check_uploads:
            verify_payload(manifest, payload)
        update = PublishedUpdate(update_id_of(signed_manifest, payload), signed_manifest, manifest, payload, time.time())
        self.rollouts[manifest.model_name] = Rollout(update, canary_percent)
        log.info("published update %s: %s v%d%s, %d payload bytes, canary %g%%", update.update_id, manifest.model_name,
                 manifest.version, " (rollback)" if manifest.rollback else "", len(payload), canary_percent)
        return update

    # --- what agents call ---------------------------------------------------------------------

    def notice(self, agent_id: str, model_name: str, model_version: int) -> Optional[PublishedUpdate]:
        """The update `agent_id` should take now, if any (and remember the agent)."""
        if not agent_id or not model_name:
            raise InvalidInputError("an update notice request needs agent_id and model_name")
        record = self.agents.get(agent_id) or self.agents.setdefault(agent_id, AgentRecord(agent_id))
        record.model_name, record.active_version, record.last_seen_unix_s = model_name, model_version, time.time()
        rollout = self.rollouts.get(model_name)
        if rollout is None:
            return None
        peers = [r for r in self.agents.values() if r.model_name == model_name and is_recent(r, self.agent_ttl_s)]
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
            raise InvalidInputError(f"unknown update state {state!r}; use one of {list(AGENT_STATES)}")
        record = self.agents.get(agent_id) or self.agents.setdefault(agent_id, AgentRecord(agent_id))
        record.model_name = model_name or record.model_name
        record.update_id, record.version, record.state = update_id, version, state
        record.reason, record.message = reason, message[:500]
        record.active_version = active_version or record.active_version
        record.last_seen_unix_s = time.time()
        log.info("agent %s: update %s (v%d) %s%s", agent_id, update_id, version, state, f" ({reason})" if reason else "")
        rollout = self.rollouts.get(record.model_name)
        if rollout is not None:
            before = rollout.phase
            rollout.on_report(record, self.agents)
            if rollout.phase != before:
                log.info("rollout %s of %s v%d: %s -> %s", rollout.update_id, record.model_name, rollout.version,
                         before, rollout.phase)

    # --- status -------------------------------------------------------------------------------

    def status(self, model_name: str = "") -> tuple[list[Rollout], list[AgentRecord]]:
        rollouts = [r for name, r in sorted(self.rollouts.items()) if not model_name or name == model_name]
        agents = [a for _, a in sorted(self.agents.items()) if not model_name or a.model_name == model_name]
        return rollouts, agents

    def _update(self, update_id: str) -> PublishedUpdate:
        for rollout in self.rollouts.values():
            if rollout.update_id == update_id:
                return rollout.update
        raise UpdateNotFoundError(f"no published update {update_id!r} (never published, or replaced by a newer one)")
