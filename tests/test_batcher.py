"""The dynamic batcher: batches form under concurrency, expired requests are skipped and never
computed, a full queue is refused, and a batch's error reaches every request in it."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from cloud_router.batcher import DynamicBatcher, WorkItem, take_batch
from shared.errors import DeadlineError, ModelError, OverloadedError


class CountingModel:
    """A real function: doubles its inputs; records every batch it computed; optionally blocks."""

    def __init__(self, hold: threading.Event | None = None) -> None:
        self.batches: list[list[float]] = []
        self.hold = hold

    def __call__(self, inputs):
        if self.hold is not None:
            self.hold.wait(5)
        self.batches.append([float(x) for x in inputs])
        return np.asarray(inputs, dtype=np.float32) * 2


def test_take_batch_is_pure_and_orders_by_priority():
    async def main():
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        heap: list[WorkItem] = []
        import heapq

        for seq, (priority, deadline) in enumerate([(0, now + 10), (5, now + 10), (0, now - 1), (1, now + 10)]):
            heapq.heappush(heap, WorkItem((-priority, seq), seq, deadline, loop.create_future()))
        batch, dropped = take_batch(heap, 2, now)
        return [i.payload for i in batch], [i.payload for i in dropped], [i.payload for i in heap]

    batch, dropped, left = asyncio.run(main())
    assert batch == [1, 3]        # priority 5, then 1
    assert dropped == []
    assert left == [0, 2]


def test_batches_form_under_concurrency():
    model = CountingModel()

    async def main():
        batcher = DynamicBatcher(model, max_batch_size=8, max_delay_ms=50)
        batcher.start()
        deadline = time.monotonic() + 5
        results = await asyncio.gather(*(batcher.submit(float(i), deadline) for i in range(32)))
        await batcher.stop()
        return results

    results = asyncio.run(main())
    assert [float(r) for r in results] == [2.0 * i for i in range(32)]   # each caller got its own row
    assert max(len(b) for b in model.batches) == 8
    assert len(model.batches) == 4


def test_expired_requests_are_dropped_not_computed():
    hold = threading.Event()
    model = CountingModel(hold)

    async def main():
        batcher = DynamicBatcher(model, max_batch_size=1, max_delay_ms=0)
        batcher.start()
        now = time.monotonic()
        first = asyncio.ensure_future(batcher.submit(1.0, now + 5))       # occupies the model
        await asyncio.sleep(0.05)
        short = asyncio.ensure_future(batcher.submit(2.0, now + 0.1))     # expires while queued
        long = asyncio.ensure_future(batcher.submit(3.0, now + 5))
        await asyncio.sleep(0.3)
        hold.set()
        outcomes = await asyncio.gather(first, short, long, return_exceptions=True)
        expired = batcher.expired_count
        await batcher.stop()
        return outcomes, expired

    (first, short, long), expired = asyncio.run(main())
    assert float(first) == 2.0 and float(long) == 6.0
    assert isinstance(short, DeadlineError)
    assert expired == 1
    assert [2.0] not in model.batches          # never computed


def test_full_queue_is_rejected():
    hold = threading.Event()
    model = CountingModel(hold)

    async def main():
        batcher = DynamicBatcher(model, max_batch_size=1, max_delay_ms=0, max_queue=3)
        batcher.start()
        deadline = time.monotonic() + 5
        running = asyncio.ensure_future(batcher.submit(0.0, deadline))
        await asyncio.sleep(0.05)                  # now inside the model, queue empty
        queued = [asyncio.ensure_future(batcher.submit(float(i), deadline)) for i in range(1, 4)]
        await asyncio.sleep(0.01)
        with pytest.raises(OverloadedError, match="queue is full"):
            await batcher.submit(99.0, deadline)
        hold.set()
        results = await asyncio.gather(running, *queued)
        await batcher.stop()
        return results

    results = asyncio.run(main())
    assert [float(r) for r in results] == [0.0, 2.0, 4.0, 6.0]   # nothing accepted was lost


def test_error_in_a_batch_reaches_every_request():
    def broken(inputs):
        raise RuntimeError("boom")

    async def main():
        batcher = DynamicBatcher(broken, max_batch_size=4, max_delay_ms=20)
        batcher.start()
        deadline = time.monotonic() + 5
        outcomes = await asyncio.gather(*(batcher.submit(float(i), deadline) for i in range(4)), return_exceptions=True)
        # the batcher survives and serves the next batch
        batcher.predict = lambda inputs: np.ones(len(inputs), np.float32)
        after = await batcher.submit(1.0, deadline)
        await batcher.stop()
        return outcomes, after

    outcomes, after = asyncio.run(main())
    assert all(isinstance(o, ModelError) and "boom" in str(o) for o in outcomes)
    assert float(after) == 1.0
