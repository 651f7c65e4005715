"""`edgecascade bench serve`: the framework's overhead against the limits it cannot beat.

1. Cloud: the bare cloud model in-process at its best batch size, against the router over gRPC
   at concurrency 64 with batching on and off.
2. Edge: the bare onnxruntime session's single-query latency, against `EdgeAgent.Infer` through
   the SDK for requests the edge accepts.
3. Transport: a raw grpc.aio echo server with the same payload, against the agent with a
   trivial model.

Every pair is measured in the same run; each figure is the median of several repetitions.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import grpc
import numpy as np

from edgecascade.loadgen import closed_loop, sequential_latencies_ms
from edgecascade.processes import Daemon, free_port, wait_serving
from protos import edgecascade_pb2 as pb
from shared.tensor_codec import to_proto

BATCH_SIZES = (1, 4, 8, 16, 32, 64)
CONCURRENCY = 64


def machine_description() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def request_bytes(payload: Any) -> bytes:
    request = pb.InferRequest(timeout_ms=30_000)
    if isinstance(payload, str):
        request.text = payload
    else:
        request.tensor.CopyFrom(to_proto(np.asarray(payload)))
    return request.SerializeToString()


async def grpc_load(target: str, method: str, payloads: Sequence[bytes], *, concurrency: int, duration_s: float):
    """Closed-loop load with pre-serialised requests (raw bytes in and out: no client-side parsing)."""
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(method)
        for i in range(20):
            await call(payloads[i % len(payloads)], timeout=30)
        return await closed_loop(lambda i: call(payloads[i % len(payloads)], timeout=30),
                                 concurrency=concurrency, duration_s=duration_s)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


# -- 1. cloud ------------------------------------------------------------------------------

def raw_model_throughput(bundle_dir: Path, inputs: list, *, duration_s: float) -> dict[int, float]:
    """Queries/s of the bare model, called in-process, at each batch size."""
    from shared.model import load_model

    model = load_model(bundle_dir)
    model.load()
    out = {}
    for batch_size in BATCH_SIZES:
        batch = [inputs[i % len(inputs)] for i in range(batch_size)]
        model.predict(batch)  # warm-up
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < duration_s:
            model.predict(batch)
            done += batch_size
        out[batch_size] = done / (time.perf_counter() - started)
    return out


def cloud_side(bundle_dir: Path, inputs: list, work: Path, *, reps: int, duration_s: float) -> dict[str, Any]:
    raw_runs = [raw_model_throughput(bundle_dir, inputs, duration_s=duration_s) for _ in range(reps)]
    raw_by_batch = {b: median([r[b] for r in raw_runs]) for b in BATCH_SIZES}
    best_batch = max(raw_by_batch, key=raw_by_batch.get)
    payloads = [request_bytes(x) for x in inputs[:512]]
    results: dict[str, Any] = {"raw_model_rps_by_batch": {str(b): round(v, 1) for b, v in raw_by_batch.items()},
                               "raw_model_best_batch": best_batch,
                               "raw_model_best_rps": round(raw_by_batch[best_batch], 1)}
    for batching in (True, False):
        settings = {"model_dirs": [str(bundle_dir)], "batching": batching, "max_batch_size": best_batch,
                    "max_delay_ms": 5.0, "max_queue": 4096}
        runs = []
        with Daemon("cloud", settings, work, name=f"router-batching-{batching}") as router:
            for _ in range(reps):
                runs.append(asyncio.run(grpc_load(router.target, "/edgecascade.v1.CloudRouter/Infer", payloads,
                                                  concurrency=CONCURRENCY, duration_s=duration_s)))
        key = "router_batched" if batching else "router_unbatched"
        results[f"{key}_rps"] = round(median([r.rps for r in runs]), 1)
        results[f"{key}_errors"] = sum(r.errors for r in runs)
        if batching:
            results["router_p50_ms"] = round(median([r.percentile_ms(50) for r in runs]), 2)
            results["router_p99_ms"] = round(median([r.percentile_ms(99) for r in runs]), 2)
    return results


# -- 2. edge -------------------------------------------------------------------------------

def edge_side(bundle_dir: Path, inputs: list, work: Path, *, reps: int, count: int) -> dict[str, Any]:
    """Single-query latency: bare session against the agent (edge-accepted requests, SDK)."""
    from shared.model import load_model
    from shared.sdk import Client

    model = load_model(bundle_dir, edge=True)
    model.load()
    raw_p50, agent_p50, agent_p99 = [], [], []
    with Daemon("edge", {"bundle_dir": str(bundle_dir), "cloud_target": None, "agent_id": "bench"}, work, name="edge-bench") as agent:
        with Client(agent.target, timeout_s=5) as client:
            accepted = [x for x in inputs if client.infer(x).served_by == "edge"][:200] or inputs[:1]
            for _ in range(reps):
                raw_p50.append(float(np.median(sequential_latencies_ms(
                    lambda i: model.predict([accepted[i % len(accepted)]]), count=count))))
                lat = sequential_latencies_ms(lambda i: client.infer(accepted[i % len(accepted)]), count=count)
                agent_p50.append(float(np.median(lat)))
                agent_p99.append(float(np.percentile(lat, 99)))
    return {"raw_edge_p50_ms": round(median(raw_p50), 4), "agent_p50_ms": round(median(agent_p50), 4),
            "agent_p99_ms": round(median(agent_p99), 4), "agent_overhead_p50_ms": round(median(agent_p50) - median(raw_p50), 4)}


# -- 3. transport floor ----------------------------------------------------------------------

def transport_floor(trivial_bundle: Path, work: Path, *, reps: int, duration_s: float, concurrency: int = 32) -> dict[str, Any]:
    payload = request_bytes(np.array([4.0, 0.0, 0.0], dtype=np.float32))
    echo_runs, agent_runs = [], []
    port = free_port()
    echo = subprocess.Popen([sys.executable, "-m", "edgecascade.echo_server", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_serving(f"127.0.0.1:{port}", 30, echo)
        with Daemon("edge", {"bundle_dir": str(trivial_bundle), "cloud_target": None}, work, name="edge-trivial") as agent:
            for _ in range(reps):  # interleaved, so drift on a noisy machine hits both alike
                echo_runs.append(asyncio.run(grpc_load(f"127.0.0.1:{port}", "/bench.Echo/Echo", [payload],
                                                       concurrency=concurrency, duration_s=duration_s)))
                agent_runs.append(asyncio.run(grpc_load(agent.target, "/edgecascade.v1.EdgeAgent/Infer", [payload],
                                                        concurrency=concurrency, duration_s=duration_s)))
    finally:
        echo.terminate()
        echo.wait(10)
    return {"payload_bytes": len(payload), "echo_rps": round(median([r.rps for r in echo_runs]), 1),
            "agent_trivial_rps": round(median([r.rps for r in agent_runs]), 1),
            "agent_trivial_errors": sum(r.errors for r in agent_runs)}


def trivial_bundle(directory: Path) -> Path:
    """A 3-class softmax over a 3-vector: the cheapest real model the agent can serve."""
    import onnx
    from onnx import TensorProto, helper

    from shared.model_card import InputSpec, ModelCard, save_card
    from shared.policy import PolicyFile, save_policy

    directory.mkdir(parents=True, exist_ok=True)
    graph = helper.make_graph([helper.make_node("Softmax", ["input"], ["probs"], axis=1)], "trivial",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 3])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, directory / "model.onnx")
    labels = ["a", "b", "c"]
    save_card(directory, ModelCard(name="trivial", version=1, labels=labels, runtime="onnx",
                                   input=InputSpec(kind="tensor", dtype="float32", shape=[3])))
    save_policy(directory, PolicyFile(model_name="trivial", model_version=1, labels=labels, threshold=0.0))
    return directory


def check_targets(r: dict[str, Any]) -> dict[str, bool]:
    return {
        "router_batched_rps >= 0.85 * raw_model_best_rps": r["router_batched_rps"] >= 0.85 * r["raw_model_best_rps"],
        "router_batched_rps >= 3.5 * router_unbatched_rps": r["router_batched_rps"] >= 3.5 * r["router_unbatched_rps"],
        "agent_p50_ms - raw_edge_p50_ms <= 0.5": r["agent_p50_ms"] - r["raw_edge_p50_ms"] <= 0.5,
        "agent_trivial_rps >= 0.6 * echo_rps": r["agent_trivial_rps"] >= 0.6 * r["echo_rps"],
    }


def bench_models(quick: bool) -> tuple[Path, list, Path, list, str]:
    """(cloud bundle, cloud inputs, edge bundle, edge inputs, description).

    Full run: the BANKING77 pair (all-MiniLM-L6-v2 in the cloud). Quick: the digits demo pair.
    """
    if not quick:
        from edgecascade.text_models import ensure_banking77_models

        pair = ensure_banking77_models()
        return pair.cloud_dir, pair.test_texts, pair.edge_dir, pair.test_texts, "banking77 (all-MiniLM-L6-v2 cloud)"
    from edgecascade.demo_models import ensure_demo_models

    pair = ensure_demo_models()
    inputs = list(pair.test_inputs)
    return pair.cloud_dir, inputs, pair.edge_dir, inputs, "digits demo pair"


def run_serve_bench(out_path: Path, *, quick: bool = False) -> dict[str, Any]:
    reps, duration_s, count = (1, 0.5, 50) if quick else (3, 5.0, 1000)
    cloud_dir, cloud_inputs, edge_dir, edge_inputs, description = bench_models(quick)
    with tempfile.TemporaryDirectory(prefix="edgecascade-bench-") as tmp:
        work = Path(tmp)
        result: dict[str, Any] = {"models": description, "machine": machine_description(), "repetitions": reps,
                                  "window_s": duration_s, "concurrency": CONCURRENCY}
        result.update(cloud_side(cloud_dir, cloud_inputs, work, reps=reps, duration_s=duration_s))
        result.update(edge_side(edge_dir, edge_inputs, work, reps=reps, count=count))
        result.update(transport_floor(trivial_bundle(work / "trivial"), work, reps=reps, duration_s=duration_s))
    result["targets"] = check_targets(result)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    return result
