"""Deadlines on the Redis path, with a real redis-server and real daemons: a big KServe batch
starves no other caller and is itself answered in time, a dead worker's work is taken over
within a 1 s deadline, and a failed submit leaves no unretrieved future behind."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from collections import Counter

import grpc
import numpy as np
import redis

from cloud_router.redis_connection import connect
from cloud_router.redis_keys import WORK_GROUP, RedisKeys
from cloud_router.redis_scheduler import RedisScheduler
from protos import grpc_service_pb2 as kserve_pb
from shared.errors import DeadlineError, UnavailableError
from tests.helpers.bundles import UNSURE
from tests.test_redis_faults import DEADLINE_S, SLACK_S, Load, agent, cloud_bundle, router, start_all
from tests.test_redis_scheduler import run, sleep_model, x


def _held_request_ids(url: str, stream: str, consumer_prefix: str) -> set[str]:
    """Request ids of the entries that consumers named `consumer_prefix*` hold unacknowledged."""
    with redis.Redis.from_url(url) as r:
        ids: set[str] = set()
        for consumer in r.xinfo_consumers(stream, WORK_GROUP):
            name = consumer["name"].decode()
            if not name.startswith(consumer_prefix) or not consumer["pending"]:
                continue
            for pending in r.xpending_range(stream, WORK_GROUP, min="-", max="+", count=1000, consumername=name):
                for _entry_id, fields in r.xrange(stream, min=pending["message_id"], max=pending["message_id"]):
                    ids.add(fields[b"i"].decode())
        return ids


def test_a_killed_workers_entries_are_answered_within_a_one_second_deadline(tmp_path, bundles, redis_url):
    """With the default takeover settings (no redis_claim_idle_ms override), every request
    whose entry a SIGKILLed worker held is still answered by the cloud, within the caller's 1 s."""
    bundle = cloud_bundle(tmp_path, batch_service_ms=100)
    defaults = {"redis_claim_idle_ms": 2_000, "redis_block_ms": None}    # the settings' defaults, not the fault tests'
    front = router(tmp_path, "front", bundle, redis_url, role="frontend", process=True)
    w1 = router(tmp_path, "w1", bundle, redis_url, role="worker", **defaults, process=True)
    w2 = router(tmp_path, "w2", bundle, redis_url, role="worker", **defaults, process=True)
    for worker in (w1, w2):
        worker.settings = {k: v for k, v in worker.settings.items() if v is not None}
    start_all(front, w1, w2)
    edge = agent(tmp_path, "edge", bundles["edge"], front, process=True).start()
    stream = RedisKeys().work_stream("toy-cloud")
    try:
        with Load(edge.target, threads=6) as load:
            time.sleep(1.5)
            held: set[str] = set()
            for _ in range(50):                                   # kill w2 while it holds a batch
                held = _held_request_ids(redis_url, stream, "w2-")
                if held:
                    w2.kill()
                    break
                time.sleep(0.02)
            assert held, "w2 never held work"
            time.sleep(2.5)
        load.check_every_request_answered_once()
        by_id = {record[0]: record[3] for record in load.records}
        outcomes = {request_id: (by_id[request_id].served_by, by_id[request_id].fallback_reason) for request_id in held}
        assert all(outcome == ("cloud", "") for outcome in outcomes.values()), outcomes
        assert "from dead workers" in w1.logs()
    finally:
        for d in (edge, front, w1, w2):
            d.stop()


def test_a_submit_that_fails_after_its_deadline_leaves_no_unretrieved_future(tmp_path, own_redis, caplog):
    """Redis stops answering while a request is queued, its deadline passes (the timer fails
    the request's future), then the connection breaks: the caller gets one error, and asyncio
    logs no "Future exception was never retrieved"."""
    model = sleep_model(tmp_path)

    async def body():
        client = await connect(own_redis.url, startup_wait_s=1)
        front = RedisScheduler(client, RedisKeys("test"), {"m": model}, pressure_interval_s=60.0)
        try:
            await client.ping()
            own_redis.process.send_signal(signal.SIGSTOP)       # the XADD gets no answer
            submit = asyncio.ensure_future(front.submit(model, x(1), time.time() + 0.2, 0, "r1"))
            await asyncio.sleep(0.5)                            # past the deadline: the timer has fired
            assert not submit.done()
            own_redis.process.kill()                            # now the XADD fails
            own_redis.process.wait()
            try:
                await submit
            except (UnavailableError, DeadlineError):
                pass
        finally:
            await front.stop()
            await client.aclose()
        gc.collect()

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        run(body())
        gc.collect()
    assert "exception was never retrieved" not in caplog.text


def _kserve_batch(target: str, rows: int, timeout_s: float) -> tuple[float, object]:
    """One `rows`-row KServe request with a `timeout_s` deadline (the request's own `timeout`
    parameter); the client waits longer, so a late answer is measured rather than cut off."""
    batch = np.tile(UNSURE, (rows, 1)).astype(np.float32)
    request = kserve_pb.ModelInferRequest(
        model_name="toy-edge",
        inputs=[kserve_pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=list(batch.shape))],
        raw_input_contents=[batch.tobytes()],
    )
    request.parameters["timeout"].int64_param = int(timeout_s * 1e6)
    with grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                    request_serializer=kserve_pb.ModelInferRequest.SerializeToString,
                                    response_deserializer=kserve_pb.ModelInferResponse.FromString)
        started = time.monotonic()
        try:
            outcome: object = infer(request, timeout=timeout_s + 1.0)
        except grpc.RpcError as exc:
            outcome = exc
        return time.monotonic() - started, outcome


def test_a_big_kserve_batch_answers_in_time_and_other_callers_too(tmp_path, bundles, redis_url):
    """Redis mode: a 4,096-row KServe request through the agent while another caller sends
    single requests, all with 1 s deadlines. Every single request is answered (cloud or
    fallback) in time; the batch is answered in time, each row by the cloud or, once the
    deadline nears, by the edge (`deadline`), never a cancelled cloud call."""
    cloud = router(tmp_path, "cloud", cloud_bundle(tmp_path, batch_service_ms=10), redis_url, max_batch_size=32, process=True).start()
    edge = agent(tmp_path, "edge", bundles["edge"], cloud, process=True).start()
    try:
        with Load(edge.target, threads=2) as load:
            time.sleep(1.0)
            elapsed_s, response = _kserve_batch(edge.target, 4096, DEADLINE_S)
            time.sleep(1.0)
        load.check_every_request_answered_once()
        assert not isinstance(response, grpc.RpcError), f"{response.code()} after {elapsed_s:.3f} s: {response.details()}"
        assert elapsed_s <= DEADLINE_S + SLACK_S
        routes = Counter(response.parameters["served_by"].string_param.split(","))
        reasons = Counter(response.parameters["fallback_reason"].string_param.split(","))
        assert sum(routes.values()) == 4096 and set(routes) <= {"cloud", "edge_fallback"}, routes
        assert set(reasons) <= {"", "deadline"}, reasons   # how many the cloud answered depends on the machine's load
    finally:
        edge.stop()
        cloud.stop()
