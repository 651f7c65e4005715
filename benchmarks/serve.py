"""`edgecascade bench serve`: the framework's overhead against the limits it cannot beat.

1. Cloud: the bare cloud model in-process at its best batch size, against the router over gRPC
   at concurrency 64 with batching on and off.
2. Edge: the bare onnxruntime session's single-query latency, against `EdgeAgent.Infer` through
   the SDK for requests the edge accepts.
3. Transport: a raw grpc.aio echo server with the same payload, against the agent with a
   trivial model.

Every pair is measured in the same run, interleaved (one repetition of each side, then the
next), so drift on a busy machine hits both sides alike; each figure is the median of the
repetitions. The load average before and after is recorded with the result.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import grpc
import numpy as np

from benchmarks.common import machine_description, median, request_bytes
from benchmarks.echo_server import METHOD as ECHO_METHOD
from benchmarks.loadgen import closed_loop, sequential_latencies_ms
from edgecascade.processes import Daemon, free_port, wait_serving
from shared.event_loop import run_on_loop

BATCH_SIZES = (1, 4, 8, 16, 32, 64)
CONCURRENCY = 64


async def grpc_load(target: str, method: str, payloads: Sequence[bytes], *, concurrency: int, duration_s: float,
                    warmup_s: float = 0.5, channels: int = 1):
    """Closed-loop load with pre-serialised requests (raw bytes in and out: no client-side parsing),
    spread over `channels` connections of their own (so SO_REUSEPORT servers see several)."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    opened = [grpc.aio.insecure_channel(target, options=options) for _ in range(channels)]
    try:
        calls = [channel.unary_unary(method) for channel in opened]
        for i in range(20 * channels):
            await calls[i % channels](payloads[i % len(payloads)], timeout=30)
        return await closed_loop(lambda i: calls[i % channels](payloads[i % len(payloads)], timeout=30),
                                 concurrency=concurrency, duration_s=duration_s, warmup_s=warmup_s)
    finally:
        for channel in opened:
            await channel.close()


def run_load(target: str, method: str, payloads: Sequence[bytes], **kwargs):
    """`grpc_load` on the bench's own event loop (uvloop when installed: the client's CPU is
    shared with the server's on one machine, so the cheaper client disturbs it less)."""
    return run_on_loop(grpc_load(target, method, payloads, **kwargs), "auto")


# -- 1. cloud ------------------------------------------------------------------------------

def raw_model_throughput(model: Any, inputs: list, *, duration_s: float) -> dict[int, float]:
    """Queries/s of the bare (loaded) model, called in-process, at each batch size."""
    out = {}
    for batch_size in BATCH_SIZES:
        batches = [[inputs[(start + i) % len(inputs)] for i in range(batch_size)] for start in range(0, 512, batch_size)]
        model.predict(batches[0])  # warm-up
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < duration_s:
            model.predict(batches[(done // batch_size) % len(batches)])
            done += batch_size
        out[batch_size] = done / (time.perf_counter() - started)
    return out


def router_max_batch_size(best_batch: int) -> int:
    """The router's batch limit: the model's best batch, but at most half the concurrency, so one
    batch fills while the other runs (a batch of all 64 in flight would leave the model idle
    while its answers travel back and the next 64 requests arrive)."""
    return max(1, min(best_batch, CONCURRENCY // 2))


def with_threads(bundle_dir: Path, threads: int, work: Path) -> Path:
    """A copy of a cloud bundle whose card asks for `threads` torch threads (runtimes with a
    `threads` option); the bundle itself when it has none."""
    card = json.loads((Path(bundle_dir) / "model.json").read_text())
    if "threads" not in card.get("options", {}):
        return Path(bundle_dir)
    copy = work / f"cloud-{threads}-threads"
    shutil.copytree(bundle_dir, copy)
    card["options"]["threads"] = threads
    (copy / "model.json").write_text(json.dumps(card, indent=2) + "\n")
    return copy


_raw_model = None


def _load_raw_model(bundle_dir: str) -> None:
    global _raw_model
    from cloud_router.model_runtimes import load_cloud_model

    _raw_model = load_cloud_model(Path(bundle_dir))
    _raw_model.load()


def _raw_throughput_in_child(inputs: list, duration_s: float, bucketed: bool = True) -> dict[int, float]:
    """`bucketed=False`: a MiniLM model splits its batches into plain fixed-size runs instead of
    length buckets (what the bucketing gains); other models have no such option."""
    encoder = getattr(_raw_model, "encoder", None)
    saved = getattr(encoder, "call_overhead_tokens", None)
    if not bucketed and encoder is not None:
        encoder.call_overhead_tokens = None
    try:
        return raw_model_throughput(_raw_model, inputs, duration_s=duration_s)
    finally:
        if encoder is not None:
            encoder.call_overhead_tokens = saved


@contextlib.contextmanager
def raw_model_process(bundle_dir: Path) -> Iterator[Any]:
    """The bare model, loaded in a fresh (spawned) process of its own: the limit is measured as
    the model runs alone, without the bench's gRPC client threads in its process (which, with
    libgomp's thread pool, once cut MiniLM's batch-1 rate 20-fold)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_load_raw_model,
                             initargs=(str(bundle_dir),)) as pool:
        yield lambda inputs, duration_s, bucketed=True: pool.submit(_raw_throughput_in_child, inputs, duration_s,
                                                                    bucketed).result()


def cloud_side(bundle_dir: Path, inputs: list, work: Path, *, reps: int, duration_s: float,
               threads: int | None = None, compare_bucketing: bool = False) -> dict[str, Any]:
    """Bare model at each batch size (in a process of its own) against the router with batching
    on and off. `threads`: run the model (both sides) with that many torch threads instead of its card's.
    `compare_bucketing`: also the bare model once without length buckets."""
    from shared.model_card import load_card

    if threads is not None:
        bundle_dir = with_threads(bundle_dir, threads, work)
    card = load_card(bundle_dir)
    payloads = [request_bytes(x) for x in inputs[:512]]
    inputs = list(inputs[:1024])
    with raw_model_process(bundle_dir) as raw_throughput:
        raw_runs = [raw_throughput(inputs, duration_s)]  # the first decides the batch limit
        unbucketed = raw_throughput(inputs, duration_s, False) if compare_bucketing else None
        best_batch = max(raw_runs[0], key=raw_runs[0].get)
        max_batch = router_max_batch_size(best_batch)
        runs: dict[bool, list] = {True: [], False: []}
        common = {"model_dirs": [str(bundle_dir)], "max_delay_ms": 5.0, "max_queue": 4096}
        with Daemon("cloud", {**common, "batching": True, "max_batch_size": max_batch}, work, name="router-batched") as batched, \
                Daemon("cloud", {**common, "batching": False}, work, name="router-unbatched") as unbatched:
            for rep in range(reps):
                if rep:
                    raw_runs.append(raw_throughput(inputs, duration_s))
                for batching, router in ((True, batched), (False, unbatched)):
                    # Warm-up of a second: the first answers of an unbatched router take 64 model calls.
                    runs[batching].append(run_load(router.target, "/edgecascade.v1.CloudRouter/Infer", payloads,
                                                   concurrency=CONCURRENCY, duration_s=duration_s,
                                                   warmup_s=min(1.0, duration_s)))
    raw_by_batch = {b: median([r[b] for r in raw_runs]) for b in BATCH_SIZES}
    best_batch = max(raw_by_batch, key=raw_by_batch.get)
    batched_rps, unbatched_rps = median([r.rps for r in runs[True]]), median([r.rps for r in runs[False]])
    extra = {}
    if unbucketed is not None:
        extra["raw_model_rps_by_batch_without_length_buckets"] = {str(b): round(v, 1) for b, v in unbucketed.items()}
    return {
        **extra,
        "cloud_model_threads": card.options.get("threads"),
        "raw_model_rps_by_batch": {str(b): round(v, 1) for b, v in raw_by_batch.items()},
        "raw_model_best_batch": best_batch,
        "raw_model_best_rps": round(raw_by_batch[best_batch], 1),
        # The most batching can give: the bare model's best rate over its batch-1 rate.
        "raw_model_batching_gain": round(raw_by_batch[best_batch] / raw_by_batch[1], 2),
        "router_max_batch_size": max_batch,
        "router_batched_rps": round(batched_rps, 1),
        "router_batched_errors": sum(r.errors for r in runs[True]),
        "router_p50_ms": round(median([r.percentile_ms(50) for r in runs[True]]), 2),
        "router_p99_ms": round(median([r.percentile_ms(99) for r in runs[True]]), 2),
        "router_unbatched_rps": round(unbatched_rps, 1),
        "router_unbatched_errors": sum(r.errors for r in runs[False]),
        "router_batching_gain": round(batched_rps / unbatched_rps, 2) if unbatched_rps else 0.0,
    }


# -- 2. edge -------------------------------------------------------------------------------

#: Idle time between the "paced" bare-session calls: about one loopback round trip, so the
#: session runs as it does behind a server (caches cooled by the wait), not in a hot loop.
PACED_GAP_S = 0.0005


def edge_side(bundle_dir: Path, inputs: list, work: Path, echo_target: str, *, reps: int, count: int) -> dict[str, Any]:
    """Single-query latency: bare session against the agent (edge-accepted requests, SDK), and a
    raw gRPC echo of an edge request's bytes (the transport's own round trip)."""
    from shared.model_loader import load_model
    from shared.sdk import Client

    model = load_model(bundle_dir, edge=True)
    model.load()
    out: dict[str, list[float]] = {}

    def keep(key: str, latencies_ms: np.ndarray) -> None:
        out.setdefault(key + "_p50_ms", []).append(float(np.median(latencies_ms)))
        out.setdefault(key + "_p99_ms", []).append(float(np.percentile(latencies_ms, 99)))

    def paced(i: int) -> None:
        time.sleep(PACED_GAP_S)
        model.predict([accepted[i % len(accepted)]])

    served_edge_ms: list[float] = []

    def via_agent(i: int) -> None:
        served_edge_ms.append(client.infer(accepted[i % len(accepted)]).edge_ms)

    with Daemon("edge", {"bundle_dir": str(bundle_dir), "cloud_target": None, "agent_id": "bench"}, work, name="edge-bench") as agent, \
            Client(agent.target, timeout_s=5) as client, grpc.insecure_channel(echo_target) as echo_channel:
        accepted = [x for x in inputs[:1000] if client.infer(x).served_by == "edge"][:200] or inputs[:1]
        echo = echo_channel.unary_unary(ECHO_METHOD)
        echo_payload = request_bytes(accepted[0])
        for _ in range(reps):
            keep("raw_edge", sequential_latencies_ms(lambda i: model.predict([accepted[i % len(accepted)]]), count=count))
            keep("raw_edge_paced", sequential_latencies_ms(paced, count=count) - PACED_GAP_S * 1000.0)
            served_edge_ms.clear()
            keep("agent", sequential_latencies_ms(via_agent, count=count))
            keep("agent_model", np.asarray(served_edge_ms[-count:]))  # edge_ms: model + policy, inside the agent
            keep("echo", sequential_latencies_ms(lambda i: echo(echo_payload, timeout=5), count=count))
    result = {key: round(median(values), 4) for key, values in out.items()
              if key in ("raw_edge_p50_ms", "raw_edge_paced_p50_ms", "agent_p50_ms", "agent_p99_ms",
                         "agent_model_p50_ms", "echo_p50_ms")}
    result["agent_overhead_p50_ms"] = round(result["agent_p50_ms"] - result["raw_edge_p50_ms"], 4)
    # What the agent adds besides its model's own time as served (which runs colder than in a loop).
    result["agent_overhead_beyond_model_p50_ms"] = round(result["agent_p50_ms"] - result["agent_model_p50_ms"], 4)
    result["edge_accepted_inputs"] = len(accepted)
    return result


# -- 3. transport floor ----------------------------------------------------------------------

#: Echo servers measured beside the issue's baseline (grpc.aio on asyncio's loop, one process):
#: label -> (--kind, --processes).
ECHO_SERVERS = {"echo_aio": ("aio", 1), "echo_uvloop": ("uvloop", 1), "echo_sync": ("sync", 1),
                "echo_aio_2proc_reuseport": ("aio", 2)}
TRANSPORT_CHANNELS = 4


def transport_floor(trivial_bundle: Path, work: Path, *, reps: int, duration_s: float, count: int,
                    concurrency: int = 32, variants: bool = True) -> dict[str, Any]:
    """Closed-loop throughput and sequential p50 of the raw echo servers against the agent
    serving a trivial model, same request bytes, interleaved. The agent runs on its default
    loop (`agent_trivial`) and, with `variants`, on asyncio's own loop too; `variants` also adds
    the uvloop, sync and two-process echo servers."""
    payload = request_bytes(np.array([4.0, 0.0, 0.0], dtype=np.float32))
    echo_names = list(ECHO_SERVERS) if variants else ["echo_aio"]
    agents = {"agent_trivial": "auto", **({"agent_trivial_asyncio": "asyncio"} if variants else {})}
    rps: dict[str, list[float]] = {}
    p50: dict[str, list[float]] = {}
    errors = 0
    with contextlib.ExitStack() as stack:
        targets = {name: (stack.enter_context(echo_server(*ECHO_SERVERS[name])), ECHO_METHOD) for name in echo_names}
        for name, loop in agents.items():
            agent = stack.enter_context(Daemon("edge", {"bundle_dir": str(trivial_bundle), "cloud_target": None,
                                                        "event_loop": loop}, work, name=name.replace("_", "-")))
            targets[name] = (agent.target, "/edgecascade.v1.EdgeAgent/Infer")
        for _ in range(reps):  # interleaved, so drift on a noisy machine hits all alike
            for name, (target, method) in targets.items():
                run = run_load(target, method, [payload], concurrency=concurrency, duration_s=duration_s,
                               channels=TRANSPORT_CHANNELS)
                errors += run.errors if name.startswith("agent") else 0
                rps.setdefault(name, []).append(run.rps)
                with grpc.insecure_channel(target) as channel:
                    call = channel.unary_unary(method)
                    p50.setdefault(name, []).append(float(np.median(sequential_latencies_ms(lambda i: call(payload, timeout=5),
                                                                                         count=count))))
    ratios = [a / e for a, e in zip(rps["agent_trivial"], rps["echo_aio"]) if e > 0]
    result = {"payload_bytes": len(payload), "transport_concurrency": concurrency, "transport_channels": TRANSPORT_CHANNELS,
              "echo_rps": round(median(rps["echo_aio"]), 1),
              "agent_trivial_rps": round(median(rps["agent_trivial"]), 1),
              "agent_trivial_to_echo_median_ratio": round(median(ratios), 3) if ratios else 0.0,
              "agent_trivial_errors": errors}
    if variants:
        result["transport_variants"] = {name: {"rps": round(median(rps[name]), 1), "p50_ms": round(median(p50[name]), 4)}
                                        for name in targets}
    return result


@contextlib.contextmanager
def echo_server(kind: str = "aio", processes: int = 1) -> Iterator[str]:
    """A raw gRPC echo server (benchmarks.echo_server) in a child process; yields its target."""
    port = free_port()
    checkout = str(Path(__file__).resolve().parents[1])   # the child finds `benchmarks` from any working directory
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [checkout, os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen([sys.executable, "-m", "benchmarks.echo_server", "--port", str(port), "--kind", kind,
                                "--processes", str(processes)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_serving(f"127.0.0.1:{port}", 30, process)
        if processes > 1:
            time.sleep(1.0)  # the other processes bind a moment later; connections go to bound ones only
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


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


#: The issue's targets that a machine can put out of reach (see `physical_limits`).
BATCHING_GAIN_TARGET = 3.5
AGENT_OVERHEAD_BUDGET_MS = 0.5


def check_targets(r: dict[str, Any]) -> dict[str, bool]:
    return {
        "router_batched_rps >= 0.85 * raw_model_best_rps": r["router_batched_rps"] >= 0.85 * r["raw_model_best_rps"],
        "router_batched_rps >= 3.5 * router_unbatched_rps":
            r["router_batched_rps"] >= BATCHING_GAIN_TARGET * r["router_unbatched_rps"],
        "agent_p50_ms - raw_edge_p50_ms <= 0.5": r["agent_p50_ms"] - r["raw_edge_p50_ms"] <= AGENT_OVERHEAD_BUDGET_MS,
        "agent_trivial_rps >= 0.6 * echo_rps": r["agent_trivial_rps"] >= 0.6 * r["echo_rps"],
    }


def physical_limits(r: dict[str, Any]) -> list[str]:
    """Targets this machine cannot meet whatever the framework does, with the measured reason."""
    out = []
    if r["raw_model_batching_gain"] < BATCHING_GAIN_TARGET:
        out.append(f"the bare model itself gains only {r['raw_model_batching_gain']}x from batching here "
                   f"(best batch against batch 1), so no server can reach {BATCHING_GAIN_TARGET}x; the router gets "
                   f"{r['router_batching_gain']}x")
    if r["echo_p50_ms"] > AGENT_OVERHEAD_BUDGET_MS:
        out.append(f"a raw gRPC echo round trip alone takes {r['echo_p50_ms']} ms, more than the {AGENT_OVERHEAD_BUDGET_MS} ms "
                   f"the agent may add to the bare session")
    return out


def bench_models(quick: bool) -> tuple[Path, list, Path, list, str]:
    """(cloud bundle, cloud inputs, edge bundle, edge inputs, description).

    Full run: the BANKING77 pair (all-MiniLM-L6-v2 in the cloud). Quick: the digits demo pair.
    """
    if not quick:
        from edgecascade.offline.text_models import ensure_banking77_models

        pair = ensure_banking77_models()
        return pair.cloud_dir, pair.test_texts, pair.edge_dir, pair.test_texts, "banking77 (all-MiniLM-L6-v2 cloud)"
    from edgecascade.offline.demo_models import ensure_demo_models

    pair = ensure_demo_models()
    inputs = list(pair.test_inputs)
    return pair.cloud_dir, inputs, pair.edge_dir, inputs, "digits demo pair"


def run_serve_bench(out_path: Path, *, quick: bool = False) -> dict[str, Any]:
    reps, duration_s, count = (1, 0.5, 50) if quick else (5, 4.0, 1000)
    cloud_dir, cloud_inputs, edge_dir, edge_inputs, description = bench_models(quick)
    started = time.perf_counter()
    result: dict[str, Any] = {"models": description, "machine": machine_description(), "repetitions": reps,
                              "window_s": duration_s, "concurrency": CONCURRENCY,
                              "load_average_before": [round(x, 2) for x in os.getloadavg()]}
    with tempfile.TemporaryDirectory(prefix="edgecascade-bench-") as tmp, echo_server() as echo_target:
        work = Path(tmp)
        # The limit is the model's best throughput on this machine: all its cores (the card's
        # own default may be one thread, for nodes running several replicas).
        result.update(cloud_side(cloud_dir, cloud_inputs, work, reps=reps, duration_s=duration_s,
                                 threads=None if quick else os.cpu_count(), compare_bucketing=not quick))
        result.update(edge_side(edge_dir, edge_inputs, work, echo_target, reps=reps, count=count))
        result.update(transport_floor(trivial_bundle(work / "trivial"), work, reps=reps, duration_s=duration_s,
                                      count=count, variants=not quick))
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    result["bench_s"] = round(time.perf_counter() - started, 1)
    result["targets"] = check_targets(result)
    result["physical_limits"] = physical_limits(result)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    return result
