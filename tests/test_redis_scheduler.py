"""Redis scheduling in one process against a real redis-server: front end, workers, streams.

Each test drives `RedisScheduler` (front end) and `RedisWorker` directly, so it can look at
the streams and counters; the daemon-level fault tests are in test_redis_faults.py.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager

import numpy as np
import pytest

from cloud_router.budget import CloudBudget, RedisBuckets
from cloud_router.fleet import RedisFleetRegistry
from cloud_router.redis_connection import connect, redact_url
from cloud_router.redis_keys import WORK_GROUP, RedisKeys
from cloud_router.redis_scheduler import RedisScheduler
from cloud_router.redis_worker import RedisWorker
from cloud_router.sleep_model import write_sleep_bundle
from cloud_router.work_codec import encode_work
from edgecascade.processes import free_port
from protos import edgecascade_pb2 as pb
from shared.errors import CloudBudgetError, DeadlineError, InvalidInputError, ModelError, UnavailableError
from shared.model_loader import load_model

KEYS = RedisKeys("test")


def sleep_model(tmp_path, batch_service_ms: float = 5.0):
    model = load_model(write_sleep_bundle(tmp_path / f"m{batch_service_ms}", name="m", batch_service_ms=batch_service_ms))
    model.load()
    return model


def x(i: int) -> np.ndarray:
    return np.full(64, i, dtype=np.float32)


@asynccontextmanager
async def redis_stack(url, model, *, workers: int = 1, start_workers: bool = True, **worker_args):
    client = await connect(url, startup_wait_s=1)
    front = RedisScheduler(client, KEYS, {"m": model}, pressure_interval_s=0.05, max_queue=worker_args.pop("max_queue", 1024),
                           stream_max_len=worker_args.pop("stream_max_len", 100_000))
    pool = [RedisWorker(client, KEYS, {"m": model}, worker_id=f"w{i}", **{"max_batch_size": 8, "block_ms": 50, **worker_args})
            for i in range(workers)]
    await front.start()
    if start_workers:
        for w in pool:
            await w.start()
    try:
        yield client, front, pool
    finally:
        for w in pool:
            await w.stop(grace_s=1)
        await front.stop()
        await client.aclose()


def run(coro, timeout_s: float = 20.0):
    """Run a test body; if it hangs, fail naming every task still waiting and where."""
    async def guarded():
        task = asyncio.ensure_future(coro)
        done, _ = await asyncio.wait([task], timeout=timeout_s)
        if not done:
            stuck = []
            for other in asyncio.all_tasks():
                frames = other.get_stack()
                where = f"{frames[-1].f_code.co_filename}:{frames[-1].f_lineno}" if frames else "?"
                stuck.append(f"{other.get_name()} at {where}")
            task.cancel()
            raise AssertionError(f"test body still running after {timeout_s} s: {stuck}")
        return task.result()

    return asyncio.run(guarded())


def test_requests_are_batched_answered_and_the_stream_drained(tmp_path, redis_url):
    model = sleep_model(tmp_path, batch_service_ms=30)

    async def main():
        async with redis_stack(redis_url, model) as (client, front, (worker,)):
            rows = await asyncio.gather(*(front.submit(model, x(i), time.monotonic() + 10, 0, f"r{i}") for i in range(40)))
            expected = model.predict([x(i) for i in range(40)])
            assert np.array_equal(np.stack(rows), expected)          # each caller got its own row
            assert max(worker.batch_sizes) > 1                        # the read formed batches
            assert sum(worker.batch_sizes) == 40 and worker.processed == 40
            assert await client.xlen(KEYS.work_stream("m")) == 0     # acknowledged entries are deleted
            pending = await client.xpending(KEYS.work_stream("m"), WORK_GROUP)
            assert pending["pending"] == 0
            assert front.answered == 40 and front.unmatched_replies == 0

    run(main())


def test_requests_past_their_deadline_are_dropped_not_computed(tmp_path, redis_url):
    model = sleep_model(tmp_path)

    async def main():
        async with redis_stack(redis_url, model, start_workers=False) as (client, front, (worker,)):
            results = await asyncio.gather(*(front.submit(model, x(i), time.monotonic() + 0.2, 0, f"r{i}") for i in range(5)),
                                           return_exceptions=True)
            assert all(isinstance(r, DeadlineError) for r in results)
            await worker.start()                                       # the worker arrives too late
            for _ in range(100):
                if worker.expired == 5:
                    break
                await asyncio.sleep(0.02)
            assert worker.expired == 5 and worker.processed == 0
            assert await client.xlen(KEYS.work_stream("m")) == 0

    run(main())


def test_malformed_entries_go_to_the_dead_letter_stream_and_the_worker_keeps_serving(tmp_path, redis_url):
    model = sleep_model(tmp_path)

    async def main():
        async with redis_stack(redis_url, model) as (client, front, (worker,)):
            stream = KEYS.work_stream("m")
            good = encode_work(ticket="zz", reply_to=KEYS.reply_list("nobody"), deadline_unix_s=time.time() + 10,
                               request_id="junk", payload=x(1))
            await client.xadd(stream, {"hello": "world"})                                 # no fields we know
            await client.xadd(stream, {**good, "q": b"\xff\xfe not a proto"})            # undecodable request
            await client.xadd(stream, {**good, "d": b"soon"})                            # bad deadline
            await client.xadd(stream, {**good, "r": b"elsewhere:reply"})                 # reply key outside the prefix
            # a well-formed entry whose tensor the model refuses: its caller hears why, at once
            with pytest.raises(InvalidInputError, match="shape"):
                await front.submit(model, np.zeros(3, np.float32), time.monotonic() + 5, 0, "wrong-shape")
            # and the worker still serves good requests
            row = await front.submit(model, x(7), time.monotonic() + 5, 0, "fine")
            assert np.array_equal(row, model.predict([x(7)])[0])
            dead = await client.xrange(KEYS.dead_letter_stream("m"))
            reasons = [fields[b"dead_reason"].decode() for _, fields in dead]
            assert len(reasons) == 5, reasons
            assert any("no ticket" in r for r in reasons)
            assert any("not an InferRequest" in r for r in reasons)
            assert any("deadline" in r for r in reasons)
            assert any("not under" in r for r in reasons)
            assert any("shape" in r for r in reasons)
            assert worker.dead_lettered == 5
            assert await client.xlen(stream) == 0                       # none left to be retried

    run(main())


def test_a_dead_consumers_pending_entries_are_reclaimed_and_answered(tmp_path, redis_url):
    model = sleep_model(tmp_path)

    async def main():
        async with redis_stack(redis_url, model, start_workers=False, claim_idle_ms=200) as (client, front, (worker,)):
            stream = KEYS.work_stream("m")
            calls = [asyncio.ensure_future(front.submit(model, x(i), time.monotonic() + 10, 0, f"r{i}")) for i in range(6)]
            await asyncio.sleep(0.1)
            # a worker that reads the batch and dies before answering
            await client.xgroup_create(stream, WORK_GROUP, id="0", mkstream=True)
            taken = await client.xreadgroup(WORK_GROUP, "doomed-worker", {stream: ">"}, count=10)
            assert len(taken[0][1]) == 6
            await worker.start()
            rows = await asyncio.gather(*calls)
            assert np.array_equal(np.stack(rows), model.predict([x(i) for i in range(6)]))
            assert worker.reclaimed == 6
            assert (await client.xpending(stream, WORK_GROUP))["pending"] == 0

    run(main())


def test_an_entry_that_keeps_killing_workers_is_dead_lettered_not_retried_forever(tmp_path, redis_url):
    model = sleep_model(tmp_path)

    async def main():
        async with redis_stack(redis_url, model, start_workers=False, claim_idle_ms=100, max_deliveries=2) as (client, front, (worker,)):
            stream = KEYS.work_stream("m")
            call = asyncio.ensure_future(front.submit(model, x(1), time.monotonic() + 10, 0, "poison"))
            await asyncio.sleep(0.05)
            await client.xgroup_create(stream, WORK_GROUP, id="0", mkstream=True)
            for victim in ("dies-1", "dies-2"):               # two workers take it and die
                await asyncio.sleep(0.15)
                if victim == "dies-1":
                    await client.xreadgroup(WORK_GROUP, victim, {stream: ">"}, count=1)
                else:
                    await client.xautoclaim(stream, WORK_GROUP, victim, min_idle_time=100, count=1)
            await asyncio.sleep(0.15)
            await worker.start()                              # the third delivery is one too many
            with pytest.raises(ModelError, match="delivered 3 times"):
                await call
            dead = await client.xrange(KEYS.dead_letter_stream("m"))
            assert len(dead) == 1 and b"delivered 3 times" in dead[0][1][b"dead_reason"]
            assert worker.processed == 0 and await client.xlen(stream) == 0

    run(main())


def test_duplicate_replies_from_a_slow_worker_are_harmless(tmp_path, redis_url):
    model = sleep_model(tmp_path, batch_service_ms=400)       # slower than the claim timeout below

    async def main():
        async with redis_stack(redis_url, model, workers=2, start_workers=False, claim_idle_ms=100) as (client, front, workers):
            await workers[0].start()
            calls = [asyncio.ensure_future(front.submit(model, x(i), time.monotonic() + 10, 0, f"r{i}")) for i in range(3)]
            await asyncio.sleep(0.05)          # the first worker has the batch and is busy with it
            await workers[1].start()           # an idle peer takes it over after 100 ms
            rows = await asyncio.gather(*calls)
            assert np.array_equal(np.stack(rows), model.predict([x(i) for i in range(3)]))
            await asyncio.sleep(0.6)                           # let the slower copy finish too
            assert sum(w.reclaimed for w in workers) >= 1
            assert front.unmatched_replies >= 1                # the second answer was ignored
            assert front.answered == 3

    run(main())


def test_streams_stay_bounded_when_no_worker_keeps_up(tmp_path, redis_url):
    model = sleep_model(tmp_path)

    async def main():
        async with redis_stack(redis_url, model, start_workers=False, stream_max_len=100) as (client, front, _):
            results = await asyncio.gather(*(front.submit(model, x(i), time.monotonic() + 0.3, 0, f"r{i}") for i in range(600)),
                                           return_exceptions=True)
            assert all(isinstance(r, DeadlineError) for r in results)
            assert await client.xlen(KEYS.work_stream("m")) < 300   # MAXLEN ~ 100 trims in whole nodes

    run(main())


def test_pressure_rises_with_the_queue_and_falls_when_it_drains(tmp_path, redis_url):
    model = sleep_model(tmp_path, batch_service_ms=50)

    async def main():
        async with redis_stack(redis_url, model, max_queue=40, capacity_interval_s=0.05) as (client, front, _):
            assert front.pressure("m") == 0.0
            calls = [asyncio.ensure_future(front.submit(model, x(i), time.monotonic() + 10, 0, f"r{i}")) for i in range(40)]
            loaded = await front.measure("m")
            while not (loaded.pressure > 0.3 and loaded.queue_depth > 0) and not all(c.done() for c in calls):
                await asyncio.sleep(0.02)    # however slowly a busy machine gets the 40 entries queued
                loaded = await front.measure("m")
            assert loaded.pressure > 0.3 and loaded.queue_depth > 0
            published = await client.get(KEYS.pressure("m"))
            assert published and b'"queue_depth"' in published
            await asyncio.gather(*calls)
            drained = await front.measure("m")
            assert drained.pressure < loaded.pressure and drained.queue_depth == 0
            assert drained.capacity_rps and drained.workers == 1

    run(main())


def test_requests_fail_fast_with_unavailable_when_redis_is_gone(tmp_path, redis_server):
    model = sleep_model(tmp_path)

    async def main():
        async with redis_stack(redis_server.url, model) as (client, front, _):
            redis_server.kill()
            started = time.monotonic()
            with pytest.raises(UnavailableError, match="Redis"):
                await front.submit(model, x(1), time.monotonic() + 5, 0, "gap")
            assert time.monotonic() - started < 2.5

    try:
        run(main())
    finally:
        redis_server.start()


def test_unreachable_redis_error_names_the_url_without_the_password():
    url = f"redis://admin:s3cret-pw@127.0.0.1:{free_port()}/0"
    with pytest.raises(UnavailableError) as info:
        run(connect(url, startup_wait_s=0))
    message = str(info.value)
    assert "s3cret-pw" not in message
    assert "redis://admin:***@127.0.0.1" in message
    assert redact_url("redis+sentinel://:pw@a:1,b:2/main") == "redis+sentinel://:***@a:1,b:2/main"


def test_cloud_budget_token_bucket_in_redis(redis_url):
    async def main():
        client = await connect(redis_url, startup_wait_s=1)
        budget = CloudBudget(RedisBuckets(client), KEYS, agent_rps=5.0, fleet_rps=None, burst_s=1.0)
        outcomes = []
        for _ in range(8):
            try:
                await budget.check("agent-1")
                outcomes.append(True)
            except CloudBudgetError:
                outcomes.append(False)
        assert outcomes == [True] * 5 + [False] * 3          # a bucket of 5, no refill yet worth a token
        await budget.check("agent-2")                         # another agent has its own bucket
        await asyncio.sleep(0.25)                             # 5/s refills one token in 0.2 s
        await budget.check("agent-1")
        await client.aclose()

    run(main())


def test_fleet_entries_expire_after_their_ttl(redis_url):
    async def main():
        client = await connect(redis_url, startup_wait_s=1)
        fleet = RedisFleetRegistry(client, KEYS)
        await fleet.record(pb.AgentStatus(agent_id="a1", model_name="edge"), router_id="r", ttl_s=0.3)
        await fleet.record(pb.AgentStatus(agent_id="a2", model_name="edge"), router_id="r", ttl_s=5)
        assert [e.agent.agent_id for e in await fleet.entries()] == ["a1", "a2"]
        await asyncio.sleep(0.4)
        assert [e.agent.agent_id for e in await fleet.entries()] == ["a2"]
        await client.aclose()

    run(main())


def test_a_sentinel_url_reaches_the_master(tmp_path, redis_server):
    import subprocess

    port = free_port()
    conf = tmp_path / "sentinel.conf"      # sentinel rewrites its config, so it gets its own file
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\nsentinel monitor main 127.0.0.1 {redis_server.port} 1\n")
    sentinel = subprocess.Popen(["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    model = sleep_model(tmp_path, batch_service_ms=1)

    async def main():
        async with redis_stack(f"redis+sentinel://127.0.0.1:{port}/main", model) as (client, front, _):
            row = await front.submit(model, x(3), time.monotonic() + 5, 0, "via-sentinel")
            assert np.array_equal(row, model.predict([x(3)])[0])

    try:
        run(main())
    finally:
        sentinel.terminate()
        sentinel.wait()
