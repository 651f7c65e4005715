"""The router's update store on disk (`update_store_dir`): published updates and rollout state
survive a restart.

```
update_store_dir/
  .lock                     held (flock) by the one router using the directory
  state.json                per model the current rollout; every agent record
  updates/<update id>/
    manifest.signed         the signed manifest envelope, as uploaded
    payload                 the payload bytes
  updates/<update id>.corrupt   a stored update that failed its checks at start, kept aside
  state.json.corrupt        a state file that could not be read at start, kept aside
```

Every file is written atomically (shared/delta/install.py: temporary file, fsync, rename,
fsync of the directory). An update's files are durable before `state.json` names it, and a
replaced update is deleted only after the new `state.json` is, so a crash at any point leaves
a state file whose updates are whole. Directories no state file names (a publish cut short,
a replaced update not yet deleted) are removed at start.

This module only stores and reads bytes; `UpdateService` checks what it reads.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from cloud_router.rollout import AgentRecord, PublishedUpdate, Rollout
from shared.delta.install import atomic_write_bytes, fsync_dir, remove_stale_temps
from shared.errors import ConfigError

log = logging.getLogger(__name__)

STATE_FORMAT = "edgecascade.router-updates/1"
STATE_FILE = "state.json"
MANIFEST_FILE = "manifest.signed"
PAYLOAD_FILE = "payload"
CORRUPT_SUFFIX = ".corrupt"
UPDATE_ID_PATTERN = r"^[0-9a-f]{16}$"
#: What a payload is served from: the uploaded bytes, or the stored file memory-mapped.
Payload = Union[bytes, mmap.mmap]


class StoredRollout(BaseModel):
    model_config = ConfigDict(extra="forbid")

    update_id: str = Field(pattern=UPDATE_ID_PATTERN)
    canary_percent: float = Field(ge=0.0, le=100.0)
    phase: Literal["canary", "full", "halted"]
    canary_agents: list[str]
    published_unix_s: float

    @classmethod
    def of(cls, rollout: Rollout) -> "StoredRollout":
        return cls(update_id=rollout.update_id, canary_percent=rollout.canary_percent, phase=rollout.phase,
                   canary_agents=sorted(rollout.canary_agents), published_unix_s=rollout.update.published_unix_s)

    def rollout_of(self, update: PublishedUpdate) -> Rollout:
        """The rollout this describes, of `update` (read back from where it was stored)."""
        rollout = Rollout(update, self.canary_percent)
        rollout.phase, rollout.canary_agents = self.phase, set(self.canary_agents)
        return rollout


class StoredState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["edgecascade.router-updates/1"] = STATE_FORMAT
    rollouts: dict[str, StoredRollout] = Field(default_factory=dict)
    """Model name -> its current rollout."""
    agents: list[AgentRecord] = Field(default_factory=list)


@dataclass
class StoredUpdate:
    signed_manifest: bytes
    payload: Payload


class UpdateStore:
    """One router's store directory; locked against a second router for as long as it is open."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._lock_file: Optional[int] = None
        self.updates_dir = self.directory / "updates"
        self.state_path = self.directory / STATE_FILE
        self.state_writes = 0
        """How many times `state.json` has been written (the tests count group commits with it)."""
        try:
            self.updates_dir.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.directory)
            self._lock_file = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(f"setting 'update_store_dir': cannot use {self.directory}: {exc}") from None
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.close()
            raise ConfigError(f"setting 'update_store_dir': {self.directory} is in use by another router "
                              "(each router needs a directory of its own)") from None

    def close(self) -> None:
        """Release the directory (a process that exits releases it too)."""
        if self._lock_file is not None:
            os.close(self._lock_file)
            self._lock_file = None

    # --- state ----------------------------------------------------------------------------------

    def load_state(self) -> StoredState:
        """The state file; empty when there is none. One that cannot be read is renamed to
        `state.json.corrupt` (replacing an older one) and the router starts without it."""
        _remove_temps(self.directory)
        try:
            return StoredState.model_validate_json(self.state_path.read_bytes())
        except FileNotFoundError:
            return StoredState()
        except (OSError, ValidationError) as exc:
            aside = self.state_path.with_name(STATE_FILE + CORRUPT_SUFFIX)
            reason = _first_error(exc)
            os.replace(self.state_path, aside)
            fsync_dir(self.directory)
            log.error("update store: %s cannot be read (%s); moved it to %s and starting with no published "
                      "updates and no rollout state: publish again", self.state_path, reason, aside)
            return StoredState()

    def save_state(self, state: StoredState) -> None:
        atomic_write_bytes(self.state_path, state_json(state))
        self.state_writes += 1

    # --- updates --------------------------------------------------------------------------------

    def save_update(self, update_id: str, signed_manifest: bytes, payload: bytes) -> None:
        """Store an update's files durably (before any state file names it)."""
        directory = self.updates_dir / update_id
        directory.mkdir(exist_ok=True)
        fsync_dir(self.updates_dir)
        atomic_write_bytes(directory / MANIFEST_FILE, signed_manifest)
        atomic_write_bytes(directory / PAYLOAD_FILE, payload)

    def read_update(self, update_id: str) -> StoredUpdate:
        """An update's files; the payload memory-mapped (read-only). OSError when one is missing."""
        directory = self.updates_dir / update_id
        if directory.is_dir():
            _remove_temps(directory)
        return StoredUpdate((directory / MANIFEST_FILE).read_bytes(), self.map_payload(update_id))

    def map_payload(self, update_id: str) -> Payload:
        """A stored payload, memory-mapped read-only: served from the page cache, not the heap."""
        with open(self.updates_dir / update_id / PAYLOAD_FILE, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            return mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) if size else b""

    def delete_update(self, update_id: str) -> None:
        shutil.rmtree(self.updates_dir / update_id, ignore_errors=True)

    def set_aside(self, update_id: str) -> Optional[Path]:
        """Rename a stored update that failed its checks to `<id>.corrupt`; None when it is gone."""
        directory = self.updates_dir / update_id
        if not directory.exists():
            return None
        aside = directory.with_name(update_id + CORRUPT_SUFFIX)
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(directory, aside)
        fsync_dir(self.updates_dir)
        return aside

    def remove_unreferenced(self, keep: set[str]) -> None:
        """Delete update directories no rollout names (kept-aside ones stay for the operator)."""
        for path in self.updates_dir.iterdir():
            if path.name in keep or path.name.endswith(CORRUPT_SUFFIX):
                continue
            log.info("update store: removed %s, which no rollout names (a replaced update, or a publish "
                     "that did not finish)", path)
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


AGENT_RECORD = TypeAdapter(AgentRecord)
"""An agent record to and from JSON (the state file's lines, the Redis update state's values)."""


def state_json(state: StoredState) -> bytes:
    """`state` as JSON, one agent record a line. Each record is serialised by a call of its own:
    pydantic holds the GIL for a whole call, so between calls the event loop gets its turn while
    this runs in a worker thread, however large the fleet."""
    head = state.model_dump_json(exclude={"agents"}).encode()  # {"format":...,"rollouts":{...}}
    agents = b",".join(b"\n" + AGENT_RECORD.dump_json(record) for record in state.agents)
    return head[:-1] + b',"agents":[' + agents + b"\n]}\n"


def _remove_temps(directory: Path) -> None:
    for temp in remove_stale_temps(directory):
        log.warning("update store: removed %s, left by a write the router did not finish", temp)


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        return f"{where}: {err['msg']}"
    return f"{type(exc).__name__}: {exc}"
