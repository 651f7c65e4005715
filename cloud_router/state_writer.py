"""Group commit of the router's rollout state (docs/model_updates.md, "The store on disk").

A change marks the state dirty (`mark`). One write at a time takes a snapshot on the event
loop (copies of the records: cheap) and serialises and writes it in a worker thread, so the
loop serves on meanwhile. Changes made during a write are covered by the next one: N changes
during one write cost one more write, not N. `durable()` waits for the write that covers every
change made so far.

A failed write is logged as an ERROR and fails the `durable()` waits it was to answer; the
state stays dirty in memory, and the next write (after the next change or `durable()` wait, or
at `close`) tries again.

Called outside an event loop (tests, tools), `mark` writes at once in the calling thread.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Optional, TypeVar

from shared.errors import UnavailableError

log = logging.getLogger(__name__)
T = TypeVar("T")


class StateWriter:
    def __init__(self, snapshot: Callable[[], Any], save: Callable[[Any], None], *, where: str) -> None:
        """`snapshot()` runs on the event loop and must be cheap; `save(snapshot)` runs in a
        worker thread and raises OSError when the state could not be written to `where`."""
        self._snapshot, self._save, self.where = snapshot, save, where
        self._one_at_a_time = asyncio.Lock()
        self.changes = 0
        """Changes so far; a write covers those made before its snapshot."""
        self.written = 0
        """The changes the state on disk covers."""
        self._writing: Optional[int] = None  # the changes the write in progress covers
        self._again = False  # a write is wanted after the one in progress
        self._task: Optional[asyncio.Task] = None
        self._waiters: list[tuple[int, asyncio.Future]] = []

    @property
    def dirty(self) -> bool:
        return self.written < self.changes

    def mark(self) -> None:
        """A change: a write covering it starts now, or right after the one in progress."""
        self.changes += 1
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            try:
                self.write_blocking()
            except OSError as exc:
                self._log_failure(exc)
            return
        self._want_write()

    async def durable(self) -> None:
        """Return once every change made so far is on disk. UnavailableError when the write that
        was to cover them failed (the next write tries again)."""
        if not self.dirty:
            return
        covers = self.changes
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((covers, waiter))
        if self._writing is None or covers > self._writing:
            self._want_write()
        await waiter

    async def write_now(self, snapshot: Callable[[], Any], then: Callable[[], T]) -> T:
        """Write `snapshot()` in turn with the other writes; `then()` runs right after the write,
        before any other write takes its snapshot, and its result is returned. OSError when the
        write fails (`then` does not run)."""
        return await self._write(snapshot, then)

    def write_blocking(self, snapshot: Optional[Callable[[], Any]] = None) -> None:
        """Write now in the calling thread, for callers outside an event loop (tests, tools).
        OSError when it fails."""
        covers = self.changes
        self._save((snapshot or self._snapshot)())
        self.written = max(self.written, covers)

    async def close(self) -> None:
        """Flush: let the write in progress finish, then write once more if anything is left."""
        if self._task is not None:
            await self._task
        if self.dirty:
            try:
                await self._write(self._snapshot, if_dirty=True)
            except OSError as exc:
                log.error("could not store the rollout state in %s at shutdown: %s; the changes since its last "
                          "write are lost", self.where, exc)

    def _want_write(self) -> None:
        self._again = True
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            while self._again:
                self._again = False
                try:
                    await self._write(self._snapshot, if_dirty=True)
                except OSError as exc:
                    self._log_failure(exc)
        finally:
            self._task = None

    async def _write(self, snapshot: Callable[[], Any], then: Optional[Callable[[], T]] = None, *,
                     if_dirty: bool = False) -> Optional[T]:
        async with self._one_at_a_time:
            if if_dirty and not self.dirty:
                return None
            covers = self.changes
            state = snapshot()
            self._writing = covers
            try:
                await asyncio.to_thread(self._save, state)
            except OSError as exc:
                self._settle(covers, f"could not store the rollout state in {self.where}: {exc}")
                raise
            finally:
                self._writing = None
            self.written = max(self.written, covers)
            self._settle(covers, None)
            return then() if then is not None else None

    def _settle(self, covers: int, error: Optional[str]) -> None:
        """Answer the `durable()` waits that the write covering `covers` changes was to answer."""
        waiting = []
        for wanted, waiter in self._waiters:
            if waiter.done():  # its caller went away
                continue
            if wanted > covers:
                waiting.append((wanted, waiter))
            elif error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(UnavailableError(error))
        self._waiters = waiting

    def _log_failure(self, exc: OSError) -> None:
        log.error("could not store the rollout state in %s (serving on from memory; the next write tries "
                  "again): %s", self.where, exc)
