"""A cloud worker replica: reads deferred requests from Redis Streams and answers them.

Each worker keeps a liveness key (`{prefix}:alive:{consumer}`) alive: it sets it with a TTL
of `worker_ttl_ms` every third of that, from a task of its own, and deletes it when it stops.

Per hosted model, one loop:
  1. every `reclaim_interval_s` (half the shorter of `worker_ttl_ms` and `claim_idle_ms`), take
     over (XCLAIM) the entries of consumers whose liveness key has expired (a dead worker: a
     SIGKILL, a crash, a lost connection), and XAUTOCLAIM entries any other consumer has held
     longer than `claim_idle_ms` (a stuck worker); process them. Entries delivered more than
     `max_deliveries` times go to the dead-letter stream instead (never retried forever);
  2. XREADGROUP with COUNT = the batch size: the read itself forms the batch;
  3. drop entries past their deadline (acknowledged, never computed), move malformed ones to
     the dead-letter stream with the reason (and tell their caller when the entry says who);
  4. run the model off the event loop;
  5. in one pipeline, in this order: push each reply to its front end's list, then XACK and
     XDEL the entries. A worker that dies before step 5 leaves them pending for a peer to
     reclaim; a duplicate reply is ignored by the front end (tickets are unique).
Acknowledged entries are deleted, and producers cap each stream (MAXLEN ~), so Redis memory
stays bounded under sustained load.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, Callable, Optional

from redis.exceptions import RedisError, ResponseError

from cloud_router.pressure import CapacityMeter
from cloud_router.redis_connection import Backoff, is_connection_error
from cloud_router.redis_keys import WORK_GROUP, RedisKeys
from cloud_router.work_codec import decode_work, encode_reply, reply_target_of
from shared.errors import EdgecascadeError, ModelError
from shared.model import Model

log = logging.getLogger(__name__)

#: A front end that stops reading leaves its reply list behind for at most this long.
REPLY_TTL_MS = 60_000


async def ensure_group(client: Any, stream: str) -> None:
    """Create the worker group on `stream` (and the stream) unless it exists. Starting at id 0
    means entries queued before any worker existed are still served."""
    try:
        await client.xgroup_create(stream, WORK_GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


class RedisWorker:
    def __init__(
        self,
        client: Any,
        keys: RedisKeys,
        models: dict[str, Model],
        *,
        worker_id: str,
        max_batch_size: int = 32,
        claim_idle_ms: int = 2000,
        worker_ttl_ms: int = 300,
        max_deliveries: int = 3,
        block_ms: int = 100,
        dead_letter_max_len: int = 10_000,
        capacity_interval_s: float = 1.0,
        executor: Optional[Executor] = None,
        on_batch: Optional[Callable[[str, int, float], None]] = None,
    ) -> None:
        """`on_batch(model_name, size, seconds)` sees every batch computed (metrics)."""
        self.client = client
        self.keys = keys
        self.models = models
        self.worker_id = worker_id
        self.consumer = f"{worker_id}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.max_batch_size = max_batch_size
        self.claim_idle_ms = int(claim_idle_ms)
        self.worker_ttl_ms = int(worker_ttl_ms)
        self.reclaim_interval_s = max(0.02, min(claim_idle_ms, worker_ttl_ms) / 2000.0)
        self.max_deliveries = max_deliveries
        self.block_ms = int(block_ms)
        self.dead_letter_max_len = dead_letter_max_len
        self.capacity_interval_s = capacity_interval_s
        self._on_batch = on_batch
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="worker-model")
        self._tasks: list[asyncio.Task] = []
        self._alive_task: Optional[asyncio.Task] = None
        self._stopping = False
        self._reply_prefix = keys.reply_list("")
        self.capacity = {name: CapacityMeter() for name in models}
        # counters, for status, metrics and tests
        self.processed = 0          # requests answered from the model
        self.expired = 0            # dropped past their deadline, never computed
        self.dead_lettered = 0
        self.reclaimed = 0          # entries taken over from another consumer (dead or stuck)
        self.batch_sizes: list[int] = []

    async def start(self) -> None:
        for name in self.models:
            await ensure_group(self.client, self.keys.work_stream(name))
        await self._refresh_alive()   # before the first read: a peer must never see this worker's entries unowned
        loop = asyncio.get_running_loop()
        self._alive_task = loop.create_task(self._stay_alive(), name="worker-alive")
        self._tasks = [loop.create_task(self._run(model), name=f"worker-{name}") for name, model in self.models.items()]
        log.info("worker %s reading %s", self.consumer, [self.keys.work_stream(n) for n in self.models])

    async def stop(self, grace_s: float = 5.0) -> None:
        """Finish the batch in hand (up to `grace_s`), then stop reading. Unfinished entries
        stay pending for a peer to reclaim."""
        self._stopping = True
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=grace_s + self.block_ms / 1000.0)
            for task in pending:
                task.cancel()
            if pending:   # the loops also check the flag: a swallowed cancellation still ends them
                await asyncio.wait(pending, timeout=2.0)
            self._tasks = []
        if self._alive_task is not None:
            self._alive_task.cancel()
            await asyncio.wait([self._alive_task], timeout=2.0)
            self._alive_task = None
        try:
            # gone now: peers take over at once whatever this worker still holds
            await self.client.delete(self.keys.worker_alive(self.consumer))
            for name in self.models:
                await self.client.hdel(self.keys.capacity(name), self.consumer)
        except RedisError:
            pass

    # -- liveness ------------------------------------------------------------------------

    async def _refresh_alive(self) -> None:
        await self.client.set(self.keys.worker_alive(self.consumer), b"1", px=self.worker_ttl_ms)

    async def _stay_alive(self) -> None:
        interval_s = self.worker_ttl_ms / 3000.0
        while not self._stopping:
            try:
                await self._refresh_alive()
            except (RedisError, OSError) as exc:   # the read loop reports a lost Redis
                log.debug("worker %s: liveness key not refreshed: %s", self.consumer, exc)
            await asyncio.sleep(interval_s)

    # -- the loop ------------------------------------------------------------------------

    async def _run(self, model: Model) -> None:
        stream = self.keys.work_stream(model.name)
        backoff = Backoff(initial_s=0.05, max_s=1.0)
        next_reclaim_s = 0.0
        next_capacity_s = 0.0
        down_since: Optional[float] = None
        entries: list = []          # a batch already read, waiting to be processed
        while not self._stopping or entries:
            try:
                now = time.monotonic()
                if now >= next_capacity_s:
                    next_capacity_s = now + self.capacity_interval_s
                    await self._publish_capacity(model.name)
                if now >= next_reclaim_s:
                    next_reclaim_s = now + self.reclaim_interval_s
                    await self._reclaim(model, stream)
                if not entries:
                    if self._stopping:
                        break
                    response = await self.client.xreadgroup(
                        WORK_GROUP, self.consumer, {stream: ">"}, count=self.max_batch_size, block=self.block_ms
                    )
                    entries = _entries_of(response)
                if down_since is not None:
                    log.info("worker %s: Redis is back after %.1f s", self.consumer, time.monotonic() - down_since)
                    down_since = None
                backoff.reset()
                if entries:
                    batch, entries = entries, []
                    # the acknowledgement and the next (non-blocking) read share one round trip
                    entries = await self._process(model, stream, batch, read_next=not self._stopping)
            except ResponseError as exc:
                if "NOGROUP" in str(exc):  # Redis restarted without its data: recreate the group
                    await self._safe(ensure_group(self.client, stream))
                    continue
                log.error("worker %s: Redis refused a command: %s", self.consumer, exc)
                await asyncio.sleep(backoff.next_s())
            except (RedisError, OSError) as exc:
                if self._stopping and not entries:
                    return
                if not is_connection_error(exc):
                    log.error("worker %s: Redis error: %s", self.consumer, exc)
                elif down_since is None:
                    down_since = time.monotonic()
                    log.warning("worker %s: lost Redis (%s); retrying with backoff", self.consumer, exc)
                await asyncio.sleep(backoff.next_s())

    async def _safe(self, awaitable: Any) -> None:
        try:
            await awaitable
        except (RedisError, OSError) as exc:
            log.debug("worker %s: %s", self.consumer, exc)

    async def _publish_capacity(self, model_name: str) -> None:
        rows_per_s = self.capacity[model_name].rows_per_s
        if rows_per_s is not None:
            await self.client.hset(self.keys.capacity(model_name), self.consumer, f"{rows_per_s:.3f}:{int(time.time() * 1000)}")

    # -- one batch -----------------------------------------------------------------------

    async def _process(self, model: Model, stream: str, entries: list, read_next: bool = False) -> list:
        """Answer one batch; with `read_next`, return the next batch (possibly empty), read
        without blocking in the same round trip as the acknowledgement."""
        now_unix_s = time.time()   # entries carry Unix deadlines: they come from other processes
        live: list[tuple[bytes, Any]] = []
        replies: list[tuple[str, bytes]] = []
        dead: list[tuple[bytes, dict, str]] = []
        done_ids: list[bytes] = []
        for entry_id, fields in entries:
            done_ids.append(entry_id)
            if not fields:          # deleted while pending: nothing left to do but acknowledge
                continue
            try:
                entry = decode_work(fields, self._reply_prefix)
                payload = model.check_input(entry.payload)
            except EdgecascadeError as exc:
                dead.append((entry_id, fields, str(exc)))
                target = reply_target_of(fields, self._reply_prefix)
                if target:
                    replies.append((target[0], encode_reply(target[1], worker_id=self.worker_id, model_ms=0.0, error=exc)))
                continue
            if entry.deadline_unix_s <= now_unix_s:
                self.expired += 1
                continue
            live.append((entry, payload))
        if live:
            started = time.perf_counter()
            try:
                outputs = await asyncio.get_running_loop().run_in_executor(
                    self._executor, model.predict, [payload for _, payload in live]
                )
                if len(outputs) != len(live):
                    raise ModelError(f"model returned {len(outputs)} rows for a batch of {len(live)}")
                model_ms = (time.perf_counter() - started) * 1000.0
                replies += [
                    (entry.reply_to, encode_reply(entry.ticket, worker_id=self.worker_id, model_ms=model_ms, probabilities=row))
                    for (entry, _), row in zip(live, outputs)
                ]
                self.processed += len(live)
            except Exception as exc:
                error = exc if isinstance(exc, ModelError) else ModelError(f"model failed on a batch of {len(live)}: {exc}")
                model_ms = (time.perf_counter() - started) * 1000.0
                replies += [(entry.reply_to, encode_reply(entry.ticket, worker_id=self.worker_id, model_ms=model_ms, error=error))
                            for entry, _ in live]
            self.capacity[model.name].record(len(live), model_ms / 1000.0)
            if self._on_batch:
                self._on_batch(model.name, len(live), model_ms / 1000.0)
            self.batch_sizes.append(len(live))
            del self.batch_sizes[:-1000]
        return await self._finish(model.name, stream, replies, dead, done_ids, read_next=read_next)

    async def _finish(self, model_name: str, stream: str, replies: list[tuple[str, bytes]],
                      dead: list[tuple[bytes, dict, str]], done_ids: list[bytes], read_next: bool = False) -> list:
        """Replies first, then the acknowledgement: an entry is never acknowledged unanswered."""
        pipe = self.client.pipeline(transaction=False)
        for reply_to, data in replies:
            pipe.rpush(reply_to, data)
            pipe.pexpire(reply_to, REPLY_TTL_MS)
        for entry_id, fields, reason in dead:
            record = {**fields, b"dead_reason": reason.encode(), b"dead_entry_id": entry_id, b"dead_worker": self.consumer.encode()}
            pipe.xadd(self.keys.dead_letter_stream(model_name), record, maxlen=self.dead_letter_max_len, approximate=True)
        if done_ids:
            pipe.xack(stream, WORK_GROUP, *done_ids)
            pipe.xdel(stream, *done_ids)
        if read_next:
            pipe.xreadgroup(WORK_GROUP, self.consumer, {stream: ">"}, count=self.max_batch_size)
        results = await pipe.execute()
        if dead:
            self.dead_lettered += len(dead)
            log.warning("worker %s: moved %d entries of %s to the dead-letter stream: %s",
                        self.consumer, len(dead), stream, dead[0][2])
        return _entries_of(results[-1]) if read_next else []

    # -- taking over a dead peer's work ---------------------------------------------------

    async def _reclaim(self, model: Model, stream: str) -> None:
        """Take over a dead peer's entries, then a stuck one's, and answer them."""
        claimed = await self._claim_from_dead(stream)
        if claimed:
            log.info("worker %s: reclaimed %d entries of %s from dead workers (liveness key expired)", self.consumer,
                     len(claimed), stream)
        else:
            response = await self.client.xautoclaim(stream, WORK_GROUP, self.consumer, min_idle_time=self.claim_idle_ms,
                                                    start_id="0-0", count=self.max_batch_size)
            claimed = [(entry_id, fields) for entry_id, fields in response[1]] if len(response) > 1 else []
            deleted = response[2] if len(response) > 2 else []
            if deleted:   # entries trimmed away while pending: XAUTOCLAIM already dropped them from the PEL
                log.info("worker %s: %d pending entries of %s were trimmed before anyone answered", self.consumer,
                         len(deleted), stream)
            if claimed:
                log.info("worker %s: reclaimed %d entries of %s idle for %d ms", self.consumer, len(claimed), stream,
                         self.claim_idle_ms)
        if claimed:
            await self._answer_claimed(model, stream, claimed)

    async def _claim_from_dead(self, stream: str) -> list:
        """Up to a batch of entries held by consumers whose liveness key has expired, now ours.
        XCLAIM's idle floor (half the TTL) keeps two live workers from taking the same entries
        from each other: claiming resets an entry's idle time."""
        summary = await self.client.xpending(stream, WORK_GROUP)
        holders = [c["name"] for c in summary.get("consumers") or [] if c["name"] != self.consumer.encode()]
        if not holders:
            return []
        pipe = self.client.pipeline(transaction=False)
        for name in holders:
            pipe.exists(self.keys.worker_alive(name.decode()))
        alive = await pipe.execute()
        for name, is_alive in zip(holders, alive):
            if is_alive:
                continue
            pending = await self.client.xpending_range(stream, WORK_GROUP, min="-", max="+", count=self.max_batch_size,
                                                       consumername=name)
            ids = [p["message_id"] for p in pending]
            if not ids:
                continue
            claimed = await self.client.xclaim(stream, WORK_GROUP, self.consumer, min_idle_time=self.worker_ttl_ms // 2,
                                               message_ids=ids)
            claimed = [(entry_id, fields) for entry_id, fields in claimed or [] if entry_id is not None]
            if claimed:
                return claimed
        return []

    async def _answer_claimed(self, model: Model, stream: str, claimed: list) -> None:
        self.reclaimed += len(claimed)
        ids = [entry_id for entry_id, _ in claimed]
        pending = await self.client.xpending_range(stream, WORK_GROUP, min=min(ids, key=_id_key), max=max(ids, key=_id_key),
                                                   count=len(ids) + 16, consumername=self.consumer)
        deliveries = {p["message_id"]: p["times_delivered"] for p in pending}
        poison = [(i, f) for i, f in claimed if deliveries.get(i, 0) > self.max_deliveries]
        rest = [(i, f) for i, f in claimed if deliveries.get(i, 0) <= self.max_deliveries]
        if poison:
            dead = [(i, f or {}, f"delivered {deliveries[i]} times without an acknowledgement (workers died on it)")
                    for i, f in poison]
            replies = []
            for _, fields, reason in dead:
                target = reply_target_of(fields, self._reply_prefix)
                if target:
                    replies.append((target[0], encode_reply(target[1], worker_id=self.worker_id, model_ms=0.0,
                                                            error=ModelError(reason))))
            await self._finish(model.name, stream, replies, dead, [i for i, _ in poison])
        if rest:
            await self._process(model, stream, rest)


def _entries_of(response: Any) -> list:
    """The (id, fields) pairs of a one-stream XREADGROUP answer."""
    return [entry for _name, entries in response or [] for entry in entries or []]


def _id_key(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)
