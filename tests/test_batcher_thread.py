"""The batcher's model thread: models sharing a lock take turns, the event loop keeps running
while a batch computes, and stop fails what is still queued."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from cloud_router.batcher import DynamicBatcher
from shared.errors import ModelError


class SlowModel:
    """Doubles its inputs after `hold_s`; records how many models were inside at once."""

    inside = 0
    most_inside = 0
    guard = threading.Lock()

    def __init__(self, hold_s: float) -> None:
        self.hold_s = hold_s

    def __call__(self, inputs):
        with SlowModel.guard:
            SlowModel.inside += 1
            SlowModel.most_inside = max(SlowModel.most_inside, SlowModel.inside)
        time.sleep(self.hold_s)
        with SlowModel.guard:
            SlowModel.inside -= 1
        return np.asarray(inputs, dtype=np.float32) * 2


def test_models_sharing_a_lock_take_turns():
    lock = threading.Lock()

    async def main():
        batchers = [DynamicBatcher(SlowModel(0.02), max_batch_size=2, max_delay_ms=1, model_lock=lock, name=f"m{i}")
                    for i in range(2)]
        for batcher in batchers:
            batcher.start()
        deadline = time.monotonic() + 5
        results = await asyncio.gather(*(b.submit(float(i), deadline) for i in range(6) for b in batchers))
        for batcher in batchers:
            await batcher.stop()
        return results

    SlowModel.most_inside = 0
    results = asyncio.run(main())
    assert sorted(float(r) for r in results) == sorted(2.0 * i for i in range(6) for _ in range(2))
    assert SlowModel.most_inside == 1


def test_loop_runs_while_a_batch_runs():
    """The model waits for an event only the event loop can set: it completes only if the loop
    keeps running while the model is inside `predict`."""
    inside = threading.Event()
    released_by_loop = threading.Event()
    seen: list[bool] = []

    def model(inputs):
        inside.set()
        seen.append(released_by_loop.wait(5))
        return np.asarray(inputs, dtype=np.float32)

    async def main():
        batcher = DynamicBatcher(model, max_batch_size=1, max_delay_ms=0)
        batcher.start()
        pending = asyncio.ensure_future(batcher.submit(1.0, time.monotonic() + 10))
        while not inside.is_set():
            await asyncio.sleep(0.001)
        released_by_loop.set()
        result = await pending
        await batcher.stop()
        return float(result)

    assert asyncio.run(main()) == 1.0
    assert seen == [True]


def test_stop_fails_queued_requests_and_submit_after_stop_is_refused():
    async def main():
        batcher = DynamicBatcher(SlowModel(0.2), max_batch_size=1, max_delay_ms=0)
        batcher.start()
        deadline = time.monotonic() + 5
        running = asyncio.ensure_future(batcher.submit(1.0, deadline))
        await asyncio.sleep(0.05)
        queued = asyncio.ensure_future(batcher.submit(2.0, deadline))
        await asyncio.sleep(0.01)
        await batcher.stop()
        outcomes = await asyncio.gather(running, queued, return_exceptions=True)
        with pytest.raises(ModelError, match="not running"):
            await batcher.submit(3.0, deadline)
        return outcomes

    running, queued = asyncio.run(main())
    assert float(running) == 2.0                 # the batch in the model finished
    assert isinstance(queued, ModelError) and "shutting down" in str(queued)


def test_prepare_runs_on_the_model_thread_and_its_error_reaches_start():
    threads: dict[str, int] = {}

    def prepare():
        threads["prepare"] = threading.get_ident()

    def model(inputs):
        threads["predict"] = threading.get_ident()
        return np.asarray(inputs, dtype=np.float32)

    def broken_prepare():
        raise ModelError("weights unreadable")

    async def main():
        batcher = DynamicBatcher(model, max_batch_size=1, max_delay_ms=0)
        await batcher.start(prepare=prepare)
        await batcher.submit(1.0, time.monotonic() + 5)
        await batcher.stop()
        failing = DynamicBatcher(model, max_batch_size=1, max_delay_ms=0)
        with pytest.raises(ModelError, match="weights unreadable"):
            await failing.start(prepare=broken_prepare)
        with pytest.raises(ModelError, match="not running"):
            await failing.submit(1.0, time.monotonic() + 5)

    asyncio.run(main())
    assert threads["prepare"] == threads["predict"] != threading.get_ident()
