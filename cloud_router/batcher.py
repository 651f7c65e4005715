"""Dynamic batching: concurrent requests in, model-sized batches out, one future per request.

`take_batch` is the pure gathering step (testable without a server). `DynamicBatcher` runs it
on the model's own thread: that thread waits up to `max_delay_ms` after the first queued
request (or after the model came free, if later) for a batch to fill, drops requests whose
deadline already passed (they are never computed), runs the model, hands each row, or the
batch's error, back to the event loop, and takes the next batch at once. The event loop only
queues requests and resolves futures; the model never waits for it between batches.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from shared.errors import DeadlineError, ModelError, OverloadedError

PredictFn = Callable[[Sequence[Any]], np.ndarray]


@dataclass(order=True)
class WorkItem:
    sort_key: tuple[int, int]                     # (-priority, arrival sequence)
    payload: Any = field(compare=False)
    deadline_s: float = field(compare=False)     # absolute, time.monotonic() clock (shared.deadlines)
    future: asyncio.Future = field(compare=False)
    enqueued_s: float = field(compare=False, default_factory=time.monotonic)


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
    """One per hosted model. `submit` returns that request's row of the model's output.

    `model_lock`, shared by several batchers, lets only one of their models run at a time."""

    def __init__(
        self,
        predict: PredictFn,
        *,
        max_batch_size: int = 32,
        max_delay_ms: float = 5.0,
        max_queue: int = 1024,
        model_lock: threading.Lock | None = None,
        on_batch: Callable[[int, float], None] | None = None,
        name: str = "model",
    ) -> None:
        self.predict = predict
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_ms / 1000.0
        self.max_queue = max_queue
        self.name = name
        self._model_lock = model_lock
        self._on_batch = on_batch
        self._heap: list[WorkItem] = []
        self._seq = itertools.count()
        self._ready = threading.Condition()   # guards _heap and _stopping; notified on arrivals
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batch_sizes: list[int] = []   # recent batch sizes, for tests and metrics
        self.expired_count = 0
        self.busy_s = 0.0                   # time spent inside the model
        self._free_since_s = 0.0            # when the model last finished a batch (time.monotonic())

    @property
    def queue_depth(self) -> int:
        return len(self._heap)

    def oldest_age_s(self, now_s: float | None = None) -> float:
        with self._ready:
            if not self._heap:
                return 0.0
            oldest_s = min(item.enqueued_s for item in self._heap)
        now_s = time.monotonic() if now_s is None else now_s
        return max(0.0, now_s - oldest_s)

    def start(self, prepare: Callable[[], None] | None = None) -> asyncio.Future:
        """Start the model thread; call from the event loop that will submit. The thread first
        runs `prepare` (loading the model, say), so that all the model's work happens on this
        one thread. Returns a future that resolves once it ran, or holds its error."""
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        if self._thread is not None:
            ready.set_result(None)
            return ready
        self._loop = loop
        self._stopping = False
        self._thread = threading.Thread(target=self._work, args=(prepare, ready), name=f"batcher-{self.name}",
                                        daemon=True)
        self._thread.start()
        return ready

    async def stop(self) -> None:
        """Stop taking batches (one already running finishes) and fail every queued request."""
        if self._thread is not None:
            with self._ready:
                self._stopping = True
                self._ready.notify()
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
            self._thread = None
        with self._ready:
            left, self._heap = self._heap, []
        for item in left:
            if not item.future.done():
                item.future.set_exception(ModelError("router is shutting down"))

    async def submit(self, payload: Any, deadline_s: float, priority: int = 0) -> np.ndarray:
        if len(self._heap) >= self.max_queue:
            raise OverloadedError(f"queue is full ({self.max_queue} requests waiting); retry later")
        if deadline_s <= time.monotonic():
            raise DeadlineError("deadline passed before the request was queued")
        if self._thread is None:
            raise ModelError("the batcher is not running")
        future = asyncio.get_running_loop().create_future()
        with self._ready:
            heapq.heappush(self._heap, WorkItem((-priority, next(self._seq)), payload, deadline_s, future))
            if len(self._heap) == 1 or len(self._heap) >= self.max_batch_size:
                self._ready.notify()  # the model thread waits only for a first request or a full batch
        return await future

    def _next_batch(self) -> tuple[list[WorkItem], list[WorkItem]] | None:
        """On the model thread: wait for work, let the batch fill, take it. None when stopping."""
        with self._ready:
            while not self._heap and not self._stopping:
                self._ready.wait()
            if self._stopping:
                return None
            # Let the batch fill: until it is full or max_delay has passed since the oldest arrival,
            # or since the model came free if that was later. Requests that arrived while the
            # model was busy may still be on their way through gRPC: when the model frees the
            # CPU, this short wait lets them join instead of leaving a small batch to run alone.
            fill_until = max(min(item.enqueued_s for item in self._heap), self._free_since_s) + self.max_delay_s
            while len(self._heap) < self.max_batch_size and not self._stopping:
                remaining_s = fill_until - time.monotonic()
                if remaining_s <= 0:
                    break
                self._ready.wait(remaining_s)
            return take_batch(self._heap, self.max_batch_size, time.monotonic())

    def _work(self, prepare: Callable[[], None] | None, ready: asyncio.Future) -> None:
        try:
            if prepare is not None:
                prepare()
        except BaseException as exc:
            self._thread = None
            self._loop.call_soon_threadsafe(_resolve, ready, exc)
            return
        self._loop.call_soon_threadsafe(_resolve, ready, None)
        while True:
            taken = self._next_batch()
            if taken is None:
                return
            batch, dropped = taken
            outputs: Any = None
            error: Exception | None = None
            started = time.perf_counter()
            if batch:
                try:
                    with self._model_lock or nullcontext():
                        outputs = self.predict([item.payload for item in batch])
                    if len(outputs) != len(batch):
                        raise ModelError(f"model returned {len(outputs)} rows for a batch of {len(batch)}")
                except Exception as exc:
                    error = exc if isinstance(exc, ModelError) else ModelError(f"model failed on a batch of {len(batch)}: {exc}")
            elapsed_s = time.perf_counter() - started
            self._free_since_s = time.monotonic()
            try:
                self._loop.call_soon_threadsafe(self._deliver, batch, dropped, outputs, error, elapsed_s)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                return

    def _deliver(self, batch: list[WorkItem], dropped: list[WorkItem], outputs: Any, error: Exception | None,
                 elapsed_s: float) -> None:
        """On the event loop: resolve the futures of one batch (and of the requests it dropped)."""
        for item in dropped:
            if not item.future.done():
                self.expired_count += 1
                item.future.set_exception(DeadlineError("deadline passed while queued; not computed"))
        if not batch:
            return
        self.busy_s += elapsed_s
        self.batch_sizes.append(len(batch))
        del self.batch_sizes[:-1000]
        if self._on_batch:
            self._on_batch(len(batch), elapsed_s)
        for i, item in enumerate(batch):
            if not item.future.done():
                if error is not None:
                    item.future.set_exception(error)
                else:
                    item.future.set_result(outputs[i])


def _resolve(future: asyncio.Future, error: BaseException | None) -> None:
    if not future.done():
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
