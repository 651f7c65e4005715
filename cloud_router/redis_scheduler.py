"""The router front end of Redis scheduling: queue deferred requests on Redis Streams, wait for
the worker's reply, publish each model's pressure.

A request becomes one entry on its model's stream (`cloud_router.work_codec`), carrying a
ticket unique to this front end process and the name of this front end's reply list. One
task BLMPOPs that list, so a reply wakes its caller without polling. A request whose deadline
passes gets DeadlineError; a later reply for it, or a duplicate from a reclaimed entry, is
ignored. When Redis is unreachable, new requests get UnavailableError at once and waiting
ones are failed as soon as the reply connection breaks (their work is likely lost), so the
edge answers them by fallback within their deadline.

Streams are FIFO: `priority` is not used on this path.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from typing import Any

import numpy as np
from redis.exceptions import RedisError

from cloud_router.pressure import PressureReading, pressure_of
from cloud_router.redis_connection import Backoff, is_connection_error
from cloud_router.redis_keys import WORK_GROUP, RedisKeys
from cloud_router.work_codec import decode_reply, encode_work, reply_result
from shared.deadlines import to_unix_s
from shared.errors import DeadlineError, EdgecascadeError, OverloadedError, UnavailableError
from shared.model import Model

log = logging.getLogger(__name__)

#: Replies taken from the reply list per BLMPOP.
REPLY_BATCH = 512


def _expire(future: asyncio.Future, model_name: str) -> None:
    if not future.done():
        future.set_exception(DeadlineError(f"no worker answered {model_name!r} before the deadline"))


def _settle(future: asyncio.Future) -> None:
    """A request's future, once its caller stops waiting: cancelled if still open, its error
    retrieved if it has one. The deadline timer or a lost connection can fail the future while
    the XADD is still under way; the XADD's own error then reaches the caller, and the
    future's would otherwise be logged as "Future exception was never retrieved"."""
    if not future.done():
        future.cancel()
    elif not future.cancelled():
        future.exception()


class RedisScheduler:
    """The `Scheduler` protocol over Redis Streams (see cloud_router.scheduler)."""

    def __init__(
        self,
        client: Any,
        keys: RedisKeys,
        models: dict[str, Model],
        *,
        router_id: str = "router",
        max_queue: int = 1024,
        stream_max_len: int = 100_000,
        saturation_wait_s: float = 0.5,
        pressure_interval_s: float = 0.2,
        capacity_stale_s: float = 5.0,
        reply_block_s: float = 1.0,
    ) -> None:
        self.client = client
        self.keys = keys
        self.models = models
        self.router_id = router_id
        self.frontend_id = f"{router_id}-{uuid.uuid4().hex[:8]}"
        self.reply_key = keys.reply_list(self.frontend_id)
        self.max_queue = max_queue
        self.stream_max_len = stream_max_len
        self.saturation_wait_s = saturation_wait_s
        self.pressure_interval_s = pressure_interval_s
        self.capacity_stale_s = capacity_stale_s
        self.reply_block_s = reply_block_s
        self.readings = {name: PressureReading.idle(name) for name in models}
        self._waiting: dict[str, asyncio.Future] = {}
        self._tickets = itertools.count()
        self._tasks: list[asyncio.Task] = []
        self._stopping = False
        # counters, for status, metrics and tests
        self.submitted = 0
        self.answered = 0
        self.unmatched_replies = 0     # late (past deadline) or duplicate (reclaimed) replies
        self.failed_on_disconnect = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._read_replies(), name="redis-replies"),
            loop.create_task(self._publish_pressure(), name="redis-pressure"),
        ]

    async def stop(self) -> None:
        # The flag as well as cancel(): redis-py may turn a cancellation inside a read into a
        # connection error, which the loops would otherwise retry.
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
        self._tasks = []
        self._fail_waiting(UnavailableError("router is shutting down"))

    # -- requests ------------------------------------------------------------------------

    async def submit(self, model: Model, payload: Any, deadline_s: float, priority: int, request_id: str) -> np.ndarray:
        if deadline_s <= time.monotonic():
            raise DeadlineError("deadline passed before the request was queued")
        reading = self.readings[model.name]
        if reading.queue_depth >= self.max_queue:
            raise OverloadedError(f"queue for {model.name!r} is full ({reading.queue_depth} requests waiting); retry later")
        ticket = f"{next(self._tickets):x}"
        fields = encode_work(ticket=ticket, reply_to=self.reply_key, deadline_unix_s=to_unix_s(deadline_s), request_id=request_id,
                             payload=payload)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting[ticket] = future
        # a timer, not wait_for: no extra task per request on the hot path
        timer = loop.call_later(max(0.0, deadline_s - time.monotonic()), _expire, future, model.name)
        try:
            try:
                await self.client.xadd(self.keys.work_stream(model.name), fields, maxlen=self.stream_max_len, approximate=True)
            except (RedisError, OSError) as exc:
                raise UnavailableError(f"work queue unavailable (Redis: {exc})") from None
            self.submitted += 1
            reply = await future
        finally:
            timer.cancel()
            self._waiting.pop(ticket, None)
            _settle(future)
        self.answered += 1
        return reply_result(reply)

    async def _read_replies(self) -> None:
        backoff = Backoff(initial_s=0.05, max_s=1.0)
        while not self._stopping:
            try:
                popped = await self.client.blmpop(self.reply_block_s, 1, self.reply_key, direction="LEFT", count=REPLY_BATCH)
                backoff.reset()
            except (RedisError, OSError) as exc:
                if self._stopping:
                    return
                lost = self._fail_waiting(UnavailableError(f"lost the connection to Redis while waiting for a worker: {exc}"))
                if lost or backoff.peek_s() == backoff.initial_s:
                    log.warning("front end %s: Redis reply read failed (%s); %d waiting requests failed over",
                                self.frontend_id, exc if is_connection_error(exc) else repr(exc), lost)
                await asyncio.sleep(backoff.next_s())
                continue
            if not popped:
                continue
            for raw in popped[1]:
                self._deliver(raw)

    def _deliver(self, raw: bytes) -> None:
        try:
            reply = decode_reply(raw)
        except EdgecascadeError as exc:
            log.warning("front end %s: ignoring a malformed reply: %s", self.frontend_id, exc)
            return
        future = self._waiting.get(reply.ticket)
        if future is None or future.done():
            self.unmatched_replies += 1
            return
        future.set_result(reply)

    def _fail_waiting(self, error: Exception) -> int:
        count = 0
        for future in list(self._waiting.values()):
            if not future.done():
                future.set_exception(error)
                count += 1
        self.failed_on_disconnect += count
        return count

    # -- pressure ------------------------------------------------------------------------

    def queue_depth(self, model_name: str) -> int:
        return self.readings[model_name].queue_depth

    def pressure(self, model_name: str) -> float:
        return self.readings[model_name].pressure

    async def _publish_pressure(self) -> None:
        backoff = Backoff(initial_s=self.pressure_interval_s, max_s=2.0)
        while not self._stopping:
            try:
                for name in self.models:
                    self.readings[name] = await self.measure(name)
                backoff.reset()
                await asyncio.sleep(self.pressure_interval_s)
            except (RedisError, OSError) as exc:
                log.debug("front end %s: pressure not measured: %s", self.frontend_id, exc)
                await asyncio.sleep(backoff.next_s())

    async def measure(self, model_name: str) -> PressureReading:
        """Measure the waiting work (entries not yet delivered to a worker; those in service do
        not count) against the workers' capacities, and publish the result. Two round trips."""
        stream = self.keys.work_stream(model_name)
        capacity_key = self.keys.capacity(model_name)
        pipe = self.client.pipeline(transaction=False)
        pipe.time()
        pipe.xlen(stream)
        pipe.xinfo_groups(stream)
        pipe.hgetall(capacity_key)
        (seconds, micros), length, groups, capacities = await pipe.execute(raise_on_error=False)
        if isinstance(length, Exception) or isinstance(capacities, Exception):
            raise length if isinstance(length, Exception) else capacities
        group = next((g for g in groups if g["name"] == WORK_GROUP.encode()), None) if isinstance(groups, list) else None
        if group is None:              # no worker has joined yet: everything is waiting
            depth, after = int(length), "-"
        else:
            lag = group.get("lag")
            depth = int(lag) if lag is not None else max(0, int(length) - int(group["pending"]))
            after = b"(" + group["last-delivered-id"]
        first = await self.client.xrange(stream, min=after, count=1) if depth else []
        now_ms = seconds * 1000 + micros / 1000.0
        oldest_age_ms = max(0.0, now_ms - int(first[0][0].split(b"-")[0])) if first else 0.0
        fresh: list[float] = []
        stale: list[bytes] = []   # workers that stopped reporting (dead) or wrote nonsense
        for consumer, value in capacities.items():
            rate, _, at_ms = value.partition(b":")
            try:
                rate_rps, at = float(rate), int(at_ms)
            except ValueError:
                stale.append(consumer)
                continue
            if now_ms - at <= self.capacity_stale_s * 1000:
                fresh.append(rate_rps)
            else:
                stale.append(consumer)
        capacity_rps = sum(fresh) if fresh else None
        reading = PressureReading(
            model=model_name,
            pressure=pressure_of(queue_depth=depth, oldest_age_s=oldest_age_ms / 1000.0, capacity_rps=capacity_rps,
                                 max_queue=self.max_queue, saturation_wait_s=self.saturation_wait_s),
            queue_depth=int(depth),
            oldest_age_ms=oldest_age_ms,
            capacity_rps=capacity_rps,
            workers=len(fresh),
            measured_unix_s=now_ms / 1000.0,
            router_id=self.router_id,
        )
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.keys.pressure(model_name), reading.to_json(), px=int(max(1.0, self.pressure_interval_s * 10) * 1000))
        if stale:
            pipe.hdel(capacity_key, *stale)
        await pipe.execute()
        return reading
