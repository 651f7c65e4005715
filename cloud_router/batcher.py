"""Dynamic batching: concurrent requests in, model-sized batches out, one future per request.

`take_batch` is the pure gathering step (testable without a server). `DynamicBatcher` wraps it
in an asyncio loop: it waits up to `max_delay_ms` after the first queued request (or after the
model came free, if later) for a batch to fill, drops requests whose deadline already passed
(they are never computed), runs the model off the event loop, and delivers each row, or the
batch's error, to every caller.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from shared.errors import DeadlineError, ModelError, OverloadedError

PredictFn = Callable[[Sequence[Any]], np.ndarray]


@dataclass(order=True)
class WorkItem:
    sort_key: tuple[int, int]                     # (-priority, arrival sequence)
    payload: Any = field(compare=False)
    deadline_s: float = field(compare=False)     # absolute, time.time() clock
    future: asyncio.Future = field(compare=False)
    enqueued_s: float = field(compare=False, default_factory=time.time)


def take_batch(heap: list[WorkItem], max_batch_size: int, now_s: float) -> tuple[list[WorkItem], list[WorkItem]]:
    """Pop up to `max_batch_size` live items, highest priority first; also return the expired
    and cancelled ones met on the way (popped, to be failed, never computed)."""
    batch: list[WorkItem] = []
    dropped: list[WorkItem] = []
    while heap and len(batch) < max_batch_size:
        item = heapq.heappop(heap)
        if item.future.done() or item.deadline_s <= now_s:
            dropped.append(item)
        else:
            batch.append(item)
    return batch, dropped


class DynamicBatcher:
    """One per hosted model. `submit` returns that request's row of the model's output."""

    def __init__(
        self,
        predict: PredictFn,
        *,
        max_batch_size: int = 32,
        max_delay_ms: float = 5.0,
        max_queue: int = 1024,
        executor: Executor | None = None,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.predict = predict
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_ms / 1000.0
        self.max_queue = max_queue
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._on_batch = on_batch
        self._heap: list[WorkItem] = []
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.batch_sizes: list[int] = []   # recent batch sizes, for tests and metrics
        self.expired_count = 0
        self.busy_s = 0.0                   # time spent inside the model
        self._free_since_s = 0.0            # when the model last finished a batch (time.time())

    @property
    def queue_depth(self) -> int:
        return len(self._heap)

    def oldest_age_s(self, now_s: float | None = None) -> float:
        if not self._heap:
            return 0.0
        now_s = time.time() if now_s is None else now_s
        return max(0.0, now_s - min(item.enqueued_s for item in self._heap))

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for item in self._heap:
            if not item.future.done():
                item.future.set_exception(ModelError("router is shutting down"))
        self._heap.clear()

    async def submit(self, payload: Any, deadline_s: float, priority: int = 0) -> np.ndarray:
        if len(self._heap) >= self.max_queue:
            raise OverloadedError(f"queue is full ({self.max_queue} requests waiting); retry later")
        if deadline_s <= time.time():
            raise DeadlineError("deadline passed before the request was queued")
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, WorkItem((-priority, next(self._seq)), payload, deadline_s, future))
        if len(self._heap) == 1 or len(self._heap) >= self.max_batch_size:
            self._wakeup.set()  # the loop waits only for a first request or a full batch
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._heap:
                self._wakeup.clear()
                await self._wakeup.wait()
            # Let the batch fill: until it is full or max_delay has passed since the oldest arrival,
            # or since the model came free if that was later. Requests that arrived while the
            # model was busy may still be on their way through gRPC: when the model frees the
            # CPU, this short wait lets them join instead of leaving a small batch to run alone.
            fill_until = max(min(item.enqueued_s for item in self._heap), self._free_since_s) + self.max_delay_s
            if len(self._heap) < self.max_batch_size:
                remaining_s = fill_until - time.time()
                if remaining_s > 0:
                    self._wakeup.clear()
                    try:
                        async with asyncio.timeout(remaining_s):
                            await self._wakeup.wait()
                    except TimeoutError:
                        pass
            batch, dropped = take_batch(self._heap, self.max_batch_size, time.time())
            for item in dropped:
                if not item.future.done():
                    self.expired_count += 1
                    item.future.set_exception(DeadlineError("deadline passed while queued; not computed"))
            if not batch:
                continue
            started = time.perf_counter()
            try:
                outputs = await loop.run_in_executor(self._executor, self.predict, [i.payload for i in batch])
                if len(outputs) != len(batch):
                    raise ModelError(f"model returned {len(outputs)} rows for a batch of {len(batch)}")
            except Exception as exc:  # noqa: BLE001 - every caller in the batch gets the error
                error = exc if isinstance(exc, ModelError) else ModelError(f"model failed on a batch of {len(batch)}: {exc}")
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(error)
                continue
            finally:
                self._free_since_s = time.time()
                elapsed_s = time.perf_counter() - started
                self.busy_s += elapsed_s
                self.batch_sizes.append(len(batch))
                del self.batch_sizes[:-1000]
                if self._on_batch:
                    self._on_batch(len(batch), elapsed_s)
            for item, row in zip(batch, outputs):
                if not item.future.done():
                    item.future.set_result(row)
