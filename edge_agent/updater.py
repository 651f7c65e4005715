"""The edge agent's model updater: poll, download, verify, apply, install, load, swap, watch.

Every `update_poll_interval_s` the agent asks the router (GetUpdateNotice) whether an update
waits for it. One update goes through these steps, each reported to the router and metrics:

1. signature, then manifest fields, model, expiry and version; the new card and policy;
2. `downloading`: chunks into downloads/<id>.part, each checked against its hash (in a
   thread, off the event loop), resumed after a restart or a broken link; `verified` once
   length and whole hash match;
3. base hash, apply and result hash in a child process at `update_apply_priority` (the
   resident apply worker, or one per update: `update_apply_worker`); the bundle is installed as
   versions/<name> (not yet current); `applied`;
4. a second slot loads it, warms it up and checks the golden inputs;
5. `current` points at it and `cascade.active` is swapped (requests in flight finish on the
   old model); `active`;
6. the health window (docs/model_updates.md): `healthy`, or swap back and `rolled_back`.

A report the router does not take (it is down or restarting) is kept and sent again before
each poll (`UpdateLink.resend_report`); the update goes on meanwhile.

A refusal at any step is `rejected` with its reason, and the old model keeps serving. Router
trouble (down, slow, update gone) only postpones the update to the next poll.

Test-only: EDGECASCADE_TEST_PAUSE_AT=<download|apply|install|swap> makes the updater stop
for good at that step, so a test can SIGKILL the agent there (`<step>:<seconds>` pauses only
that long, so a test can cut the link meanwhile). Never set it in production.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from edge_agent.cascade import ActiveModel, Cascade
from edge_agent.metrics import AgentMetrics
from edge_agent.model_slot import bundle_files, load_slot, prepare_slot, write_bundle_files
from edge_agent.settings import EdgeSettings
from edge_agent.update_link import UpdateLink
from edge_agent.version_store import VersionStore, manifest_version_name
from shared.delta.apply_worker import ResidentApplyWorker
from shared.delta.chunks import PayloadAssembler
from shared.delta.manifest import Manifest, SignedManifest, verify_manifest
from shared.delta.package import apply_verified, file_sha256
from shared.delta.signing import load_public_key
from shared.errors import InvalidInputError, UnavailableError, UpdateRejectedError
from shared.update_states import HEALTH_WINDOW_REASON

log = logging.getLogger(__name__)

PAUSE_ENV = "EDGECASCADE_TEST_PAUSE_AT"
PAUSE_STEPS = ("download", "apply", "install", "swap")
#: Router states the metrics gauge has no label for.
METRIC_STATE = {"healthy": "active"}
#: Until the swap, a thread of the update (model load, warm-up, golden check) that holds the
#: GIL hands it to the serving event loop within this long (Python's default is 5 ms).
UPDATE_GIL_SWITCH_INTERVAL_S = 0.001


@contextmanager
def short_gil_turns(interval_s: float = UPDATE_GIL_SWITCH_INTERVAL_S):
    """Lower sys.setswitchinterval to `interval_s` (never raise it) for the block, then restore it."""
    if interval_s <= 0:
        raise InvalidInputError(f"interval_s must be positive, got {interval_s}")
    before = sys.getswitchinterval()
    sys.setswitchinterval(min(before, interval_s))
    try:
        yield
    finally:
        sys.setswitchinterval(before)


async def pause_point(step: str) -> None:
    """Test-only hook (see the module docstring): `<step>` waits for good, `<step>:<seconds>`
    waits that long and goes on."""
    wanted, _, seconds = os.environ.get(PAUSE_ENV, "").partition(":")
    if wanted != step:
        return
    log.warning("TEST PAUSE at %s (%s is set) for %s", step, PAUSE_ENV, f"{seconds} s" if seconds else "good")
    if seconds:
        await asyncio.sleep(float(seconds))
    else:
        await asyncio.Event().wait()


class Updater:
    def __init__(self, cascade: Cascade, store: VersionStore, link: UpdateLink, metrics: AgentMetrics,
                 settings: EdgeSettings) -> None:
        self.cascade = cascade
        self.store = store
        self.link = link
        self.metrics = metrics
        self.public_key = load_public_key(settings.update_public_key)
        self.providers = list(settings.providers)
        self.poll_interval_s = settings.update_poll_interval_s
        self.health_window_s = settings.update_health_window_s
        self.health_requests = settings.update_health_requests
        self.apply_priority = settings.update_apply_priority
        self.apply_worker: Optional[ResidentApplyWorker] = (
            ResidentApplyWorker(self.apply_priority) if settings.update_apply_worker == "resident" else None
        )
        self.refused: dict[str, str] = {}
        """Update ids this agent refused or rolled back (reason), never tried again while it runs."""
        self._task: Optional[asyncio.Task] = None

    def start(self) -> None:
        if self.apply_worker is not None:
            self.apply_worker.start()  # its imports run now, at its low priority, not during an update
        self._task = asyncio.get_running_loop().create_task(self._run(), name="updater")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.apply_worker is not None:
            await asyncio.to_thread(self.apply_worker.close)
        await self.link.close()

    async def _run(self) -> None:
        try:
            await self.resume()
        except Exception:
            log.exception("resuming the update journal failed")
        while True:
            try:
                await self.poll_once()
            except Exception:
                log.exception("update check failed unexpectedly")
            await asyncio.sleep(self.poll_interval_s)

    async def poll_once(self) -> Optional[str]:
        """Send a state report the router has not taken yet, then ask for an update and take it;
        the final state, or None when there was none."""
        await self.link.resend_report()
        model = self.cascade.active.model
        try:
            notice = await self.link.notice(model.name, model.version)
        except UnavailableError as exc:
            log.debug("%s", exc)
            return None
        if not notice.available or notice.update_id in self.refused:
            return None
        return await self.run_update(notice.update_id, notice.signed_manifest)

    # --- one update ---------------------------------------------------------------------------

    async def run_update(self, update_id: str, envelope: bytes) -> str:
        """Take one update through every step; the final state (or `interrupted`)."""
        manifest: Optional[Manifest] = None
        name = ""
        try:
            current = self.cascade.active
            signed = SignedManifest.from_bytes(envelope)
            manifest = verify_manifest(signed.manifest_bytes, signed.signature, self.public_key,
                                       active_version=current.model.version, now=time.time(),
                                       model_name=current.model.name)
            name = manifest_version_name(manifest)
            with short_gil_turns():  # until the swap
                bundle = await self._install(update_id, manifest, current)
                candidate = await asyncio.to_thread(prepare_slot, bundle, self.providers, manifest.golden)
        except UnavailableError as exc:
            log.warning("update %s interrupted: %s (it resumes at the next poll)", update_id, exc)
            return "interrupted"
        except UpdateRejectedError as exc:
            self.refused[update_id] = exc.reason
            self.store.remove_downloads()
            if name and name != self.store.current_name():
                self.store.uninstall(name)
            log.warning("update %s rejected (%s): %s", update_id, exc.reason, exc)
            await self._report(update_id, manifest.version if manifest else 0, "rejected", exc.reason, str(exc))
            return "rejected"
        return await self._swap(update_id, manifest, name, candidate)

    async def _install(self, update_id: str, manifest: Manifest, current: ActiveModel) -> Path:
        """Steps 2-3: the new version's bundle under versions/, complete and verified."""
        card, policy = bundle_files(manifest, current)
        name = manifest_version_name(manifest)
        existing = self.store.installed(name)
        if existing is not None:
            if await asyncio.to_thread(file_sha256, existing / manifest.file) == manifest.target_sha256:
                log.info("update %s: version %s is already installed (an earlier attempt stopped before the swap)",
                         update_id, name)
                await self._report(update_id, manifest.version, "applied")
                return existing
            self.store.uninstall(name)
        await self._report(update_id, manifest.version, "downloading")
        payload = await self._download(update_id, manifest)
        await self._report(update_id, manifest.version, "verified")
        staging = self.store.new_staging(update_id)
        base = current.model.bundle_dir / manifest.file
        await asyncio.to_thread(apply_verified, manifest, payload, base, staging / manifest.file,
                                priority=self.apply_priority, worker=self.apply_worker)
        await pause_point("apply")
        write_bundle_files(staging, card, policy)
        bundle = await asyncio.to_thread(self.store.install, staging, name)
        self.store.remove_downloads()
        await self._report(update_id, manifest.version, "applied")
        await pause_point("install")
        return bundle

    async def _download(self, update_id: str, manifest: Manifest) -> Path:
        self.store.remove_downloads(keep=update_id)
        # chunk hashing and writing (and re-hashing a resumed part file) run off the event loop:
        # hashlib and file writes release the GIL, so serving goes on meanwhile
        parts = await asyncio.to_thread(PayloadAssembler, manifest, self.store.part_path(update_id))
        with parts:
            missing = parts.missing()
            if len(missing) < manifest.chunk_count:
                log.info("resuming the download of update %s: %d of %d chunks already on disk", update_id,
                         manifest.chunk_count - len(missing), manifest.chunk_count)
            for n, index in enumerate(missing):
                data = await self.link.fetch_chunk(update_id, index)
                await asyncio.to_thread(parts.add_chunk, index, data)
                if n == 0:
                    await pause_point("download")
            return await asyncio.to_thread(parts.finish)

    async def _swap(self, update_id: str, manifest: Manifest, name: str, candidate: ActiveModel) -> str:
        """Step 5, then the health window."""
        previous = self.store.current_name()
        journal = {"update_id": update_id, "version": manifest.version, "name": name, "previous": previous}
        await asyncio.to_thread(self.store.write_journal, journal)
        await asyncio.to_thread(self.store.switch_to, name)
        old, self.cascade.active = self.cascade.active, candidate
        counts_at_swap = (candidate.requests, candidate.errors)   # the window counts from the swap on
        log.info("update %s: now serving %s v%d (was v%d)", update_id, manifest.model_name, manifest.version,
                 old.model.version)
        await pause_point("swap")
        await self._report(update_id, manifest.version, "active")
        return await self._probation(update_id, manifest.version, name, previous, old, counts_at_swap)

    # --- health window and rollback -----------------------------------------------------------

    async def resume(self) -> Optional[str]:
        """After a restart: finish the health window of an update swapped in before the crash."""
        entry = self.store.read_journal()
        if entry is None:
            return None
        if self.store.current_name() != entry.get("name"):
            self.store.clear_journal()  # the crash came before the pointer moved: nothing was swapped
            return None
        log.info("update %s: resuming its health window after a restart", entry["update_id"])
        await self._report(entry["update_id"], int(entry["version"]), "active")
        return await self._probation(entry["update_id"], int(entry["version"]), entry["name"], entry.get("previous"), None)

    async def _probation(self, update_id: str, version: int, name: str, previous: Optional[str],
                         old: Optional[ActiveModel], counts_at_swap: Optional[tuple[int, int]] = None) -> str:
        failure = await self.watch_health(self.cascade.active, counts_at_swap)
        if failure is None:
            await asyncio.to_thread(self.store.clear_journal)
            await asyncio.to_thread(self.store.prune, {previous} if previous else set())
            await self._report(update_id, version, "healthy")
            return "healthy"
        if previous is None or self.store.installed(previous) is None:
            # nothing to go back to: keep serving, but tell the router the update failed, so a
            # rollout halts instead of taking this agent's next poll for a healthy one
            message = f"{failure}; no previous version is installed to roll back to, still serving v{version}"
            log.error("update %s failed its health window: %s", update_id, message)
            await asyncio.to_thread(self.store.clear_journal)
            self.refused[update_id] = HEALTH_WINDOW_REASON
            await self._report(update_id, version, "rejected", HEALTH_WINDOW_REASON, message)
            return "rejected"
        restored = old if old is not None else await asyncio.to_thread(load_slot, self.store.versions / previous,
                                                                       self.providers)
        await asyncio.to_thread(self.store.switch_to, previous)
        self.cascade.active = restored
        await asyncio.to_thread(self.store.clear_journal)
        await asyncio.to_thread(self.store.uninstall, name)
        self.refused[update_id] = HEALTH_WINDOW_REASON
        log.warning("update %s rolled back to v%d: %s", update_id, restored.model.version, failure)
        await self._report(update_id, version, "rolled_back", HEALTH_WINDOW_REASON, failure)
        return "rolled_back"

    async def watch_health(self, active: ActiveModel, since: Optional[tuple[int, int]] = None) -> Optional[str]:
        """None once the model served `health_requests` requests or `health_window_s` passed
        without an error; otherwise what went wrong. Requests and errors count from `since`
        (the model's (requests, errors) at the swap, so none served while the swap was being
        reported go unseen), or from now."""
        deadline = time.monotonic() + self.health_window_s
        requests, errors = since if since is not None else (active.requests, active.errors)
        while True:
            if active.errors > errors:
                return f"{active.errors - errors} model error(s) in the first {active.requests - requests} requests"
            if active.requests - requests >= self.health_requests or time.monotonic() >= deadline:
                return None
            await asyncio.sleep(min(0.05, self.health_window_s / 10))

    async def _report(self, update_id: str, version: int, state: str, reason: str = "", message: str = "") -> None:
        if state not in ("rejected", "rolled_back"):  # those two log a warning with the reason
            log.info("update %s (v%d): %s", update_id, version, state)
        self.metrics.set_update_state(METRIC_STATE.get(state, state), version)
        active = self.cascade.active.model
        await self.link.report(model_name=active.name, update_id=update_id, version=version, state=state, reason=reason,
                               message=message, active_version=active.version)


def open_version_store(settings: EdgeSettings) -> Optional[VersionStore]:
    """The updater's store, recovered and seeded, when updates are on (update_public_key set)."""
    if settings.update_public_key is None:
        return None
    load_public_key(settings.update_public_key)  # a missing or bad key stops the start, before serving
    store = VersionStore(settings.state_dir)
    store.open(settings.bundle_dir, settings.policy_file)
    return store


def start_updater(cascade: Cascade, store: Optional[VersionStore], metrics: AgentMetrics,
                  settings: EdgeSettings) -> Optional[Updater]:
    if store is None:
        return None
    if not settings.cloud_target:
        log.warning("update_public_key is set but cloud_target is not: this agent cannot learn of updates")
        return None
    link = UpdateLink(settings.cloud_target, agent_id=settings.agent_id, max_message_bytes=settings.max_message_bytes,
                      security=settings.cloud_security(settings.plaintext))
    updater = Updater(cascade, store, link, metrics, settings)
    updater.start()
    return updater
