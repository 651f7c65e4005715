"""Redis scheduling with real daemons, a real redis-server and faults: a worker SIGKILLed under
load, Redis restarted under load, a saturated cloud, silent agents, a spent budget, no Redis.

Every request is counted (never sampled): each one must get exactly one answer, from the
cloud or from edge fallback, within its deadline.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis
import yaml

from cloud_router.redis_keys import WORK_GROUP, RedisKeys
from cloud_router.sleep_model import write_sleep_bundle
from edgecascade import AsyncClient, Client, RetryPolicy
from edgecascade.cli import main as cli_main
from edgecascade.processes import Daemon, InProcessDaemon, free_port
from protos import edgecascade_pb2_grpc as pb_grpc
from shared.model_card import InputSpec
from shared.sdk import InferResult, build_request
from tests.helpers.bundles import LABELS, UNSURE, make_softmax_bundle
from tests.helpers.updates import AnyDaemon

DEADLINE_S = 1.0
SLACK_S = 0.5          # scheduling noise on a busy 2-core machine; far below a lost request's cost
NO_RETRY = RetryPolicy(max_attempts=1)


def cloud_bundle(tmp_path: Path, batch_service_ms: float) -> Path:
    return write_sleep_bundle(tmp_path / f"cloud-{batch_service_ms:g}", name="toy-cloud", labels=LABELS,
                              input_spec=InputSpec(kind="tensor", dtype="float32", shape=[3]),
                              batch_service_ms=batch_service_ms)


def router(tmp_path, name, bundle, redis_url, role="all", *, process: bool = False, **settings) -> AnyDaemon:
    """A router in this process; in a child process with `process=True` (to kill it, or see it survive)."""
    config = {"model_dirs": [str(bundle)], "router_id": name, "role": role, "redis_url": redis_url,
              "redis_claim_idle_ms": 300, "redis_block_ms": 100, "max_batch_size": 4, "redis_startup_wait_s": 2.0,
              "shutdown_grace_s": 1.0, **settings}
    return (Daemon if process else InProcessDaemon)("cloud", config, tmp_path, name=name)


def agent(tmp_path, name, bundle, cloud: AnyDaemon, *, process: bool = False, **settings) -> AnyDaemon:
    config = {"bundle_dir": str(bundle), "cloud_target": cloud.target, "agent_id": name, "breaker_failure_threshold": 3,
              "breaker_cooldown_s": 0.3, "heartbeat_interval_s": 0.2, "shutdown_grace_s": 1.0, **settings}
    return (Daemon if process else InProcessDaemon)("edge", config, tmp_path, name=name)


def start_all(*daemons: AnyDaemon) -> None:
    with ThreadPoolExecutor(len(daemons)) as pool:
        list(pool.map(lambda d: d.start(), daemons))


class Load:
    """Closed-loop callers through an edge agent; every call and its outcome is recorded."""

    def __init__(self, target: str, threads: int, value: np.ndarray = UNSURE) -> None:
        self.target = target
        self.value = value
        self.records: list[tuple[str, float, float, object]] = []   # (request id, start, elapsed, result or error)
        self.issued = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(t,)) for t in range(threads)]

    def _run(self, thread: int) -> None:
        # The request carries DEADLINE_S (timeout_ms); the client waits a second longer, so a late
        # answer on a starved machine is seen and measured against the deadline, not lost.
        with grpc.insecure_channel(self.target) as channel:
            stub = pb_grpc.EdgeAgentStub(channel)
            i = 0
            while not self._stop.is_set():
                request_id = f"t{thread}-{i}"
                with self._lock:
                    self.issued += 1
                started = time.monotonic()
                request = build_request(self.value, model="", request_id=request_id, priority=0, timeout_s=DEADLINE_S)
                try:
                    outcome: object = InferResult.from_proto(stub.Infer(request, timeout=DEADLINE_S + 1.0))
                except Exception as exc:
                    outcome = exc
                with self._lock:
                    self.records.append((request_id, started, time.monotonic() - started, outcome))
                i += 1

    def __enter__(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def between(self, start: float, end: float) -> list:
        return [r[3] for r in self.records if start <= r[1] < end]

    def check_every_request_answered_once(self) -> None:
        errors = [r for r in self.records if isinstance(r[3], Exception)]
        assert errors == [], f"{len(errors)} calls failed, e.g. {errors[:3]}"
        assert len(self.records) == self.issued                          # nothing lost
        ids = [r[0] for r in self.records]
        assert len(set(ids)) == len(ids)
        assert all(r[3].request_id == r[0] for r in self.records)       # each answer is its own
        assert {r[3].served_by for r in self.records} <= {"cloud", "edge_fallback"}
        late = [r for r in self.records if r[2] > DEADLINE_S + SLACK_S]
        assert late == [], f"{len(late)} answers came after the deadline, e.g. {late[:3]}"


def test_a_worker_killed_under_load_loses_no_request(tmp_path, bundles, redis_url):
    bundle = cloud_bundle(tmp_path, batch_service_ms=100)    # workers are busy: the victim dies holding work
    front = router(tmp_path, "front", bundle, redis_url, role="frontend")
    w1 = router(tmp_path, "w1", bundle, redis_url, role="worker")
    w2 = router(tmp_path, "w2", bundle, redis_url, role="worker", process=True)
    start_all(front, w1, w2)
    edge = agent(tmp_path, "edge", bundles["edge"], front).start()
    stream = RedisKeys().work_stream("toy-cloud")
    try:
        with redis.Redis.from_url(redis_url) as r, Load(edge.target, threads=6) as load:
            time.sleep(1.5)
            w2.kill()                                                # SIGKILL mid-batch
            killed_at = time.monotonic()
            held = {c["name"].decode(): c["pending"] for c in r.xinfo_consumers(stream, WORK_GROUP)}
            time.sleep(2.5)
        load.check_every_request_answered_once()
        after = load.between(killed_at + 1.0, math.inf)
        assert after and sum(res.served_by == "cloud" for res in after) / len(after) > 0.8   # w1 carries on
        victim_held = sum(n for name, n in held.items() if name.startswith("w2-"))
        pending_left = r_pending(redis_url, stream)
        assert pending_left <= 6 * 2                                 # only the live worker's current batches
        if victim_held:                                              # w2 died holding work: w1 took it over
            assert "reclaimed" in w1.logs(), f"w2 held {victim_held} entries but w1 never reclaimed"
    finally:
        for d in (edge, front, w1, w2):
            d.stop()


def r_pending(url: str, stream: str) -> int:
    with redis.Redis.from_url(url) as r:
        for _ in range(20):                                          # in-flight batches finish within a second
            pending = r.xpending(stream, WORK_GROUP)["pending"]
            if pending == 0:
                return 0
            time.sleep(0.1)
        return pending


def test_redis_restarted_under_load_routers_and_agents_recover(tmp_path, bundles, own_redis):
    bundle = cloud_bundle(tmp_path, batch_service_ms=10)
    front = router(tmp_path, "front", bundle, own_redis.url, role="frontend", fleet_ttl_s=5.0, process=True)
    worker = router(tmp_path, "worker", bundle, own_redis.url, role="worker", process=True)
    start_all(front, worker)
    edge = agent(tmp_path, "edge", bundles["edge"], front, process=True).start()
    try:
        with Load(edge.target, threads=4) as load:
            time.sleep(1.5)
            own_redis.kill()
            down_at = time.monotonic()
            time.sleep(1.0)
            own_redis.start()                                        # same port, empty: no streams, no groups
            up_at = time.monotonic()
            time.sleep(4.0)
        load.check_every_request_answered_once()
        before = load.between(0, down_at - 0.2)                     # not in flight when Redis died
        gap = load.between(down_at + 0.05, up_at)
        after = load.between(up_at + 2.5, math.inf)
        settled = before[len(before) // 2:]
        assert settled and all(res.served_by == "cloud" for res in settled), _routes(settled)
        assert gap and all(res.served_by == "edge_fallback" for res in gap), _routes(gap)   # answered, not dropped
        assert after and sum(res.served_by == "cloud" for res in after) / len(after) > 0.8, _routes(after)
        with redis.Redis.from_url(own_redis.url) as r:               # heartbeats re-registered the agent
            assert r.get(RedisKeys().fleet_agent("edge")) is not None
        assert front.process.poll() is None and worker.process.poll() is None and edge.process.poll() is None
    finally:
        for d in (edge, front, worker):
            d.stop()


def _routes(results: list) -> dict:
    routes: dict = {}
    for res in results:
        key = f"{res.served_by}/{res.fallback_reason}"
        routes[key] = routes.get(key, 0) + 1
    return routes


def _saturate(target: str, stop: threading.Event, concurrency: int) -> None:
    async def main():
        async with AsyncClient(target, service="router", timeout_s=3.0, retry=NO_RETRY) as client:
            async def loop(k: int) -> None:
                while not stop.is_set():
                    try:
                        await client.infer(np.array([0.1 * k, 0.0, 0.0], np.float32))
                    except Exception:
                        await asyncio.sleep(0.01)
            await asyncio.gather(*(loop(k) for k in range(concurrency)))

    asyncio.run(main())


def _scrape(port: int) -> dict[str, float]:
    """The agent's /metrics as {"name{labels}": value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        lines = response.read().decode().splitlines()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines if line and not line.startswith("#")}


def _probe(target: str, seconds: float) -> float:
    """The share of uncertain requests the agent sent to the cloud (deferral rate) over `seconds`."""
    # max_prob 0.38 .. 0.56: below the calibrated threshold 0.6, above the pressure floor 0.34
    inputs = [np.array([math.log(2 * m / (1 - m)), 0, 0], np.float32) for m in (0.38, 0.44, 0.50, 0.56)]
    sent = total = 0
    end = time.monotonic() + seconds
    with Client(target, timeout_s=DEADLINE_S, retry=NO_RETRY) as client:
        while time.monotonic() < end:
            result = client.infer(inputs[total % len(inputs)])
            assert result.served_by != "edge"
            total += 1
            sent += result.fallback_reason != "pressure"
            time.sleep(0.01)
    return sent / total


@pytest.mark.parametrize("scheduler", ["redis", "memory"])
def test_a_saturated_cloud_lowers_the_deferral_rate_until_load_drops(tmp_path, redis_url, scheduler):
    edge_bundle = make_softmax_bundle(tmp_path / "edge-p", name="toy-edge", scale=1.0, threshold=0.6, min_threshold=0.34)
    bundle = cloud_bundle(tmp_path, batch_service_ms=50)            # about 80 rows/s at batch 4
    cloud = router(tmp_path, "cloud", bundle, redis_url if scheduler == "redis" else None, max_delay_ms=1.0,
                   pressure_saturation_wait_ms=200.0, pressure_interval_ms=50.0)
    cloud.start()
    metrics_port = free_port()
    edge = agent(tmp_path, "edge", edge_bundle, cloud, heartbeat_interval_s=0.1, metrics_port=metrics_port).start()
    try:
        idle_rate = _probe(edge.target, 1.0)
        stop = threading.Event()
        saturator = threading.Thread(target=_saturate, args=(cloud.target, stop, 48))
        saturator.start()
        try:
            time.sleep(0.8)
            saturated_rate = _probe(edge.target, 1.5)
            with Client(edge.target) as client:
                status = client.status()
            metrics = _scrape(metrics_port)
        finally:
            stop.set()
            saturator.join()
        time.sleep(1.0)
        recovered_rate = _probe(edge.target, 1.0)
        print(f"deferral rate idle {idle_rate:.2f} saturated {saturated_rate:.2f} recovered {recovered_rate:.2f}")
        assert idle_rate > 0.9, idle_rate
        assert saturated_rate < 0.5 * idle_rate, (idle_rate, saturated_rate)
        assert recovered_rate > 0.9, (saturated_rate, recovered_rate)
        assert status.cloud_pressure > 0.5 and status.threshold < status.base_threshold    # in the agent's status too
        assert status.fallback_counts["pressure"] > 0
        assert metrics['edgecascade_fallbacks_total{reason="pressure"}'] > 0           # and in its metrics
        assert metrics["edgecascade_cloud_pressure"] > 0.5
    finally:
        edge.stop()
        cloud.stop()


def test_fleet_entries_appear_and_a_silent_agent_expires(tmp_path, bundles, redis_url, capsys):
    cloud = router(tmp_path, "cloud", cloud_bundle(tmp_path, 5), redis_url, fleet_ttl_s=1.0).start()
    a1 = agent(tmp_path, "agent-1", bundles["edge"], cloud)
    a2 = agent(tmp_path, "agent-2", bundles["edge"], cloud, process=True)
    start_all(a1, a2)
    try:
        with Client(a1.target) as client:
            client.infer(UNSURE)
        time.sleep(0.5)
        assert cli_main(["fleet", "status", "--redis-url", redis_url, "--json"]) == 0
        listing = json.loads(capsys.readouterr().out)
        by_id = {row["agent"]["agent_id"]: row for row in listing["agents"]}
        assert set(by_id) == {"agent-1", "agent-2"}
        first = by_id["agent-1"]["agent"]
        assert first["model_name"] == "toy-edge" and first["model_version"] == "1"
        assert first["policy_signal"] == "max_prob" and first["breaker_state"] == "closed"
        assert first["route_counts"].get("cloud", 0) >= 1
        a2.kill()                                                    # silent from now on
        killed_at = time.monotonic()
        while time.monotonic() - killed_at < 4.0:
            assert cli_main(["fleet", "status", "--router", cloud.target]) == 0
            table = capsys.readouterr().out
            if "agent-2" not in table:
                break
            time.sleep(0.2)
        assert "agent-2" not in table and "agent-1" in table
        assert time.monotonic() - killed_at >= 0.5                   # not before its TTL (1 s) was near
    finally:
        for d in (a1, a2, cloud):
            d.stop()


def test_cloud_budget_answers_locally_flagged(tmp_path, bundles, redis_url):
    cloud = router(tmp_path, "cloud", cloud_bundle(tmp_path, 5), redis_url, cloud_budget_fleet_rps=2.0,
                   cloud_budget_burst_s=1.0).start()
    edge = agent(tmp_path, "edge", bundles["edge"], cloud).start()
    try:
        with Client(edge.target) as client:
            results = [client.infer(UNSURE) for _ in range(12)]
            status = client.status()
        routes = [(r.served_by, r.fallback_reason) for r in results]
        assert routes.count(("cloud", "")) in (2, 3)                 # a bucket of 2, maybe one refill
        assert routes.count(("edge_fallback", "cloud_budget")) == 12 - routes.count(("cloud", ""))
        assert status.fallback_counts["cloud_budget"] >= 9
        assert status.breaker_state == "closed"                      # a spent budget is not a sick cloud
    finally:
        edge.stop()
        cloud.stop()


def test_unreachable_redis_at_start_is_a_clear_error_without_the_password(tmp_path, bundles):
    port = free_port()
    config = tmp_path / "cloud.yaml"
    config.write_text(yaml.safe_dump({"model_dirs": [str(cloud_bundle(tmp_path, 5))], "listen": f"127.0.0.1:{free_port()}",
                                      "redis_url": f"redis://ops:hunter2@127.0.0.1:{port}/0", "redis_startup_wait_s": 0.3}))
    done = subprocess.run([sys.executable, "-m", "edgecascade.cli", "cloud", "run", "--config", str(config)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert f"cannot reach Redis at redis://ops:***@127.0.0.1:{port}/0" in done.stderr
    assert "hunter2" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
