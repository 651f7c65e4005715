"""Per-client limits on the router: the bookkeeping on a fake clock, then real daemons: a caller
over its share gets RESOURCE_EXHAUSTED with a retry hint, other callers are not affected, and
an edge agent answers by fallback without opening its breaker."""

from __future__ import annotations

import time

import grpc
import pytest

from cloud_router.limits import ClientLimits
from edgecascade.processes import InProcessDaemon
from protos import edgecascade_pb2 as pb
from protos import edgecascade_pb2_grpc as pb_grpc
from shared.errors import RETRY_AFTER_MS_KEY, RateLimitedError
from shared.sdk import Client
from shared.tensor_codec import to_proto
from tests.helpers.bundles import UNSURE, make_softmax_bundle


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def test_concurrency_limit_is_per_client_and_released():
    limits = ClientLimits(max_concurrent=2, rate_rps=None)
    assert limits.admit("a") is None and limits.admit("a") is None
    assert limits.admit("a") > 0          # the third call at once is refused with a hint
    assert limits.admit("b") is None      # another client is not affected
    limits.release("a", 0.05)
    assert limits.admit("a") is None


def test_rate_limit_refills_and_hints_the_wait():
    clock = FakeClock()
    limits = ClientLimits(max_concurrent=None, rate_rps=10.0, burst_s=0.2, clock=clock)  # a bucket of 2
    for _ in range(2):
        assert limits.admit("a") is None
        limits.release("a", 0.0)
    wait_s = limits.admit("a")
    assert wait_s == pytest.approx(0.1)
    clock.now_s += wait_s
    assert limits.admit("a") is None


def test_client_table_is_bounded_and_forgets_idle_clients_first():
    limits = ClientLimits(max_concurrent=1, rate_rps=None, max_clients=3)
    for name in "abc":
        assert limits.admit(name) is None
    assert limits.admit("d") is not None   # every tracked client is busy: refused, not tracked
    assert len(limits) == 3
    limits.release("a", 0.0)
    assert limits.admit("d") is None       # idle "a" was forgotten to make room
    assert len(limits) == 3


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("limits")
    toy = make_softmax_bundle(tmp / "toy", name="toy-cloud", scale=10.0, permute=True)
    settings = {"model_dirs": [str(toy)], "client_max_concurrent": 1, "client_rate_rps": 2.0,
                "client_burst_s": 1.0, "max_delay_ms": 0.0}
    with InProcessDaemon("cloud", settings, tmp, name="router") as router:
        yield {"router": router, "tmp": tmp}


def test_router_answers_resource_exhausted_with_a_retry_hint(limited):
    with Client(limited["router"].target, service="router", timeout_s=5) as client:
        codes = []
        for _ in range(6):  # a bucket of 2 at 2/s: most of six back-to-back calls are refused
            try:
                client.infer(UNSURE)
                codes.append("ok")
            except RateLimitedError as exc:
                assert exc.retry_after_s > 0
                assert "over its limit" in str(exc)
                codes.append("limited")
        assert "ok" in codes and "limited" in codes
    with grpc.insecure_channel(limited["router"].target) as channel:
        stub = pb_grpc.CloudRouterStub(channel)
        for _ in range(5):
            try:
                stub.Infer(pb.InferRequest(tensor=to_proto(UNSURE)), timeout=5)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                hint = dict(exc.trailing_metadata())[RETRY_AFTER_MS_KEY]
                assert int(hint) >= 1
                break
        else:
            pytest.fail("never limited")


def test_edge_falls_back_on_a_rate_limit_without_opening_its_breaker(limited):
    settings = {"bundle_dir": str(make_softmax_bundle(limited["tmp"] / "edge", name="toy-edge", scale=1.0)),
                "cloud_target": limited["router"].target, "breaker_failure_threshold": 2, "agent_id": "limited-edge"}
    with InProcessDaemon("edge", settings, limited["tmp"], name="edge") as edge, Client(edge.target, timeout_s=5) as client:
        time.sleep(1.0)  # client_burst_s: the bucket the other test emptied (all loopback callers share one) is full again
        results = [client.infer(UNSURE) for _ in range(12)]
        reasons = {r.fallback_reason for r in results if r.served_by == "edge_fallback"}
        assert reasons == {"cloud_rate_limited"}, reasons
        assert any(r.served_by == "cloud" for r in results)
        assert client.status().breaker_state == "closed"


def test_memory_budget_buckets_are_bounded():
    import asyncio

    from cloud_router.budget import MemoryBuckets

    clock = FakeClock()
    buckets = MemoryBuckets(clock, max_keys=100, forget_idle_s=60.0)

    async def fill() -> None:
        for i in range(100):
            await buckets.take(f"agent-{i}", 1.0, 1.0)
        clock.now_s += 61.0
        for i in range(100, 1000):
            await buckets.take(f"agent-{i}", 1.0, 1.0)

    asyncio.run(fill())
    assert len(buckets._buckets) <= 100


def test_fleet_registry_forgets_expired_agents_without_being_read():
    import asyncio

    from cloud_router.fleet import MemoryFleetRegistry

    clock = FakeClock()
    registry = MemoryFleetRegistry(clock)

    async def beat() -> None:
        for i in range(1000):  # a thousand agents seen once (or ids a broken client made up)
            clock.now_s += 0.1
            await registry.record(pb.AgentStatus(agent_id=f"agent-{i}"), router_id="r", ttl_s=5.0)

    asyncio.run(beat())
    assert len(registry._entries) <= 60  # only those seen in the last ttl (plus one prune interval)
