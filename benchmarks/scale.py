"""`edgecascade bench scale`: Redis scheduling with 1, 2 and 4 worker replicas on one Redis.

The cloud model is the "sleep" runtime: every batch takes a fixed, known service time, so a
worker's capacity is known (max_batch_size / batch_service_ms) and any shortfall is the
scheduler's. One router front end (role frontend) queues requests on Redis Streams; worker
replicas (role worker) are added one by one. A closed-loop gRPC load keeps three batches per
worker in flight (one computing, one waiting, one in transit), and reports throughput
and p50/p99 latency for each worker count. Scaling efficiency is throughput(N) / (N x
throughput(1)).

In the same run, at low load (one request at a time, a 2 ms model), the Redis path (front end
-> stream -> worker -> reply list) is compared with the in-memory scheduler of a single router:
the difference of the medians is the Redis path's added latency. The two are measured in
alternating rounds so machine noise hits both alike; the figure reported is the median over
rounds of each round's difference.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import machine_description, request_bytes
from benchmarks.loadgen import sequential_latencies_ms
from benchmarks.redis_process import RedisServer
from cloud_router.sleep_model import write_sleep_bundle
from edgecascade.processes import Daemon
from shared.model_card import InputSpec

INFER = "/edgecascade.v1.CloudRouter/Infer"
WORKER_COUNTS = (1, 2, 4)
BATCH_SERVICE_MS = 100.0
MAX_BATCH = 8
LOW_LOAD_SERVICE_MS = 2.0
#: Batches in flight per worker: one computing, one waiting, one in transit (gRPC and replies).
IN_FLIGHT_BATCHES = 3
TARGET_EFFICIENCY = 0.8
TARGET_OVERHEAD_MS = 2.0


def _bundles(root: Path) -> tuple[Path, Path]:
    spec = InputSpec(kind="tensor", dtype="float32", shape=[16])
    scale = write_sleep_bundle(root / "scale", name="scale", input_spec=spec, batch_service_ms=BATCH_SERVICE_MS)
    low = write_sleep_bundle(root / "lowload", name="lowload", input_spec=spec, batch_service_ms=LOW_LOAD_SERVICE_MS)
    return scale, low


def _router(root: Path, name: str, bundles: list[Path], **settings: Any) -> Daemon:
    config = {"model_dirs": [str(b) for b in bundles], "router_id": name, "max_batch_size": MAX_BATCH,
              "max_delay_ms": 0.0, "max_queue": 100_000, "shutdown_grace_s": 1.0, **settings}
    return Daemon("cloud", config, root, name=name)


def _payloads(model: str, count: int = 64) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        raw = request_bytes(rng.standard_normal(16).astype(np.float32))
        out.append(raw + _model_field(model))
    return out


def _model_field(model: str) -> bytes:
    """The InferRequest `model` field (1, length-delimited), appended to pre-serialised bytes."""
    from protos import edgecascade_pb2 as pb

    return pb.InferRequest(model=model).SerializeToString()


async def _closed_loop(target: str, payloads: list[bytes], *, concurrency: int, duration_s: float,
                       warmup_s: float = 1.0) -> dict[str, float]:
    """Keep `concurrency` requests in flight. Throughput counts every answer that arrives inside
    the window (whenever its request left), so long latencies do not bias it; latency
    percentiles are over requests sent inside the window."""
    import grpc

    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(INFER)
        started = time.perf_counter()
        window = (started + warmup_s, started + warmup_s + duration_s)
        completions = 0
        errors = 0
        latencies: list[float] = []

        async def client(k: int) -> None:
            nonlocal completions, errors
            i = k
            while time.perf_counter() < window[1]:
                sent = time.perf_counter()
                try:
                    await call(payloads[i % len(payloads)], timeout=30)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                finally:
                    i += concurrency
                done = time.perf_counter()
                if window[0] <= done <= window[1]:
                    completions += 1
                    if sent >= window[0]:
                        latencies.append((done - sent) * 1000.0)

        await asyncio.gather(*(client(k) for k in range(concurrency)))
    return {"rps": completions / duration_s, "p50_ms": float(np.percentile(latencies, 50)),
            "p99_ms": float(np.percentile(latencies, 99)), "errors": errors}


def _sequential_ms(target: str, payloads: list[bytes], count: int) -> np.ndarray:
    import grpc

    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(INFER)
        return sequential_latencies_ms(lambda i: call(payloads[i % len(payloads)], timeout=10), count=count, warmup=20)


def run_scale_bench(out_path: str | Path, quick: bool = False) -> dict:
    duration_s = 2.0 if quick else 6.0
    rounds, per_round = (2, 100) if quick else (10, 150)
    result: dict[str, Any] = {
        "benchmark": "scale",
        "quick": quick,
        "machine": machine_description(),
        "load_average_at_start": list(os.getloadavg()),
        "model": {"runtime": "sleep", "batch_service_ms": BATCH_SERVICE_MS, "max_batch_size": MAX_BATCH,
                  "worker_capacity_rps": MAX_BATCH * 1000.0 / BATCH_SERVICE_MS},
        "workers": [], "concurrency": [], "throughput_rps": [], "p50_ms": [], "p99_ms": [], "errors": [],
        "scaling_efficiency": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        root = Path(tmp)
        scale_bundle, low_bundle = _bundles(root)
        daemons: list[Daemon] = []
        with RedisServer(root / "redis") as redis_server:
            try:
                redis = {"redis_url": redis_server.url, "redis_block_ms": 200}
                front = _router(root, "front", [scale_bundle, low_bundle], role="frontend", **redis)
                memory = _router(root, "memory", [low_bundle])
                for d in (front, memory):
                    daemons.append(d.start())
                workers: list[Daemon] = []

                def add_worker() -> None:
                    w = _router(root, f"worker{len(workers) + 1}", [scale_bundle, low_bundle], role="worker", **redis)
                    workers.append(w.start())
                    daemons.append(w)

                add_worker()
                # -- low load: Redis path vs in-memory path, alternating rounds ---------------
                low = _payloads("lowload")
                redis_ms, memory_ms = [], []
                for _ in range(rounds):
                    redis_ms.append(_sequential_ms(front.target, low, per_round))
                    memory_ms.append(_sequential_ms(memory.target, low, per_round))
                redis_all, memory_all = np.concatenate(redis_ms), np.concatenate(memory_ms)
                # the median over rounds of each round's difference of medians: robust to a
                # neighbour loading the machine during one round
                per_round = [float(np.median(r) - np.median(m)) for r, m in zip(redis_ms, memory_ms)]
                result["low_load"] = {
                    "batch_service_ms": LOW_LOAD_SERVICE_MS, "rounds": rounds, "requests_each": int(len(redis_all)),
                    "in_memory_p50_ms": round(float(np.percentile(memory_all, 50)), 3),
                    "in_memory_p99_ms": round(float(np.percentile(memory_all, 99)), 3),
                    "redis_p50_ms": round(float(np.percentile(redis_all, 50)), 3),
                    "redis_p99_ms": round(float(np.percentile(redis_all, 99)), 3),
                    "overhead_p50_ms_per_round": [round(d, 3) for d in per_round],
                }
                result["redis_overhead_p50_ms"] = round(float(np.median(per_round)), 3)
                # -- throughput with 1, 2, 4 workers ---------------------------------------
                payloads = _payloads("scale")
                for count in WORKER_COUNTS:
                    while len(workers) < count:
                        add_worker()
                    time.sleep(0.5)
                    concurrency = IN_FLIGHT_BATCHES * MAX_BATCH * count
                    load = asyncio.run(_closed_loop(front.target, payloads, concurrency=concurrency, duration_s=duration_s))
                    result["workers"].append(count)
                    result["concurrency"].append(concurrency)
                    result["throughput_rps"].append(round(load["rps"], 2))
                    result["p50_ms"].append(round(load["p50_ms"], 3))
                    result["p99_ms"].append(round(load["p99_ms"], 3))
                    result["errors"].append(load["errors"])
            finally:
                for d in reversed(daemons):
                    d.stop()
    base = result["throughput_rps"][0]
    result["scaling_efficiency"] = [round(t / (n * base), 3) if base else 0.0
                                    for n, t in zip(result["workers"], result["throughput_rps"])]
    result["ideal_throughput_rps"] = [n * result["model"]["worker_capacity_rps"] for n in result["workers"]]
    result["load_average_at_end"] = list(os.getloadavg())
    efficiency_at_4 = result["scaling_efficiency"][-1]
    result["targets"] = {
        "scaling_efficiency_at_4_workers": {"target": f">= {TARGET_EFFICIENCY}", "measured": efficiency_at_4,
                                            "met": efficiency_at_4 >= TARGET_EFFICIENCY},
        "redis_overhead_p50_ms": {"target": f"<= {TARGET_OVERHEAD_MS}", "measured": round(result["redis_overhead_p50_ms"], 3),
                                  "met": result["redis_overhead_p50_ms"] <= TARGET_OVERHEAD_MS},
    }
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    return result
