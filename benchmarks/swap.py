"""Hot-swap benchmark: model updates through a real router and agent under steady load.

An open-loop client, in a process of its own, sends `rate_rps` requests per second (evenly
spaced) to the agent the whole time. The router and the bench process (every thread of
each) run at nice 10: they stand for other machines (the cloud, the operator); the bench keeps
one channel to the router for publishing and status polls (every `STATUS_POLL_S`). After a warm-up, the bench
publishes `swaps` signed updates one after the other (v1 -> v2 -> ... ; an ONNX MLP whose
weights all move a little each time) and waits for the agent to report each one healthy.

Before each publish comes a steady window of `STEADY_WINDOW_S`, so steady and swap requests
meet the same background load (on a shared machine it drifts). A request is a *swap* request
when it starts inside a swap window: from the moment the agent takes up the update (its
`downloading` report, read from its log) until the first answer from the new version plus
`SWAP_TAIL_S` (the whole update on the board: download, apply in a child process, install,
load, warm-up, golden check, swap). The time before that, from the publish until the agent's
next poll hears of it, is the cloud's work (the router taking in and checking the upload),
which in real life runs on another machine; requests that start there are reported apart,
and together with the swap windows as *publish-to-swap* windows. A request is *steady* when it
starts inside a steady window. Reported: failed requests (all of them, any window), p50/p99
latency of each set, the median and maximum over swaps of each swap's own p99, and the time
from publish to the first answer of the new version.

Control, in the same run: after each steady window, a process spinning at SCHED_IDLE (the
lowest CPU priority Linux has) runs for `BUSY_BURST_S`, with no update going on; the p99 of
the requests that start in those bursts, against steady, is what any background CPU work
does to serving on this machine, however low its priority (`IdleBusyLoop`).
"""

from __future__ import annotations

import asyncio
import datetime
import multiprocessing
import os
import queue
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgecascade.offline.onnx_mlp import save_mlp_onnx

SWAP_TAIL_S = 0.1
WARM_UP_S = 2.0
STEADY_WINDOW_S = 1.0
SETTLE_S = 0.3
STATUS_POLL_S = 0.05
#: Control: how long the idle-priority busy loop runs after each steady window, and the gap
#: before the publish (so its requests have finished).
BUSY_BURST_S = 0.1
BUSY_GAP_S = 0.05
HIDDEN = 512
INPUT_DIM = 256


def _write_bundle(directory: Path, version: int, weights: list[np.ndarray]) -> Path:
    from shared.model_card import InputSpec, ModelCard, save_card
    from shared.policy import PolicyFile, save_policy

    directory.mkdir(parents=True)
    labels = [f"c{i}" for i in range(weights[-1].shape[0])]
    save_mlp_onnx(directory / "model.onnx", weights[0::2], weights[1::2])
    save_card(directory, ModelCard(name="swap-mlp", version=version, labels=labels, runtime="onnx",
                                   input=InputSpec(kind="tensor", dtype="float32", shape=[INPUT_DIM])))
    save_policy(directory, PolicyFile(model_name="swap-mlp", model_version=version, labels=labels, threshold=0.0))
    return directory


def build_versions(workdir: Path, count: int) -> list[Path]:
    """`count` bundles of one MLP; each version nudges every weight of the one before."""
    rng = np.random.default_rng(7)
    sizes = (INPUT_DIM, HIDDEN, HIDDEN, 10)
    weights: list[np.ndarray] = []
    for a, b in zip(sizes, sizes[1:]):
        weights += [(rng.standard_normal((a, b)) * np.sqrt(2.0 / a)).astype(np.float32), np.zeros(b, np.float32)]
    bundles = []
    for version in range(1, count + 1):
        bundles.append(_write_bundle(workdir / f"v{version}", version, weights))
        weights = [(w + rng.standard_normal(w.shape).astype(np.float32) * 1e-3).astype(np.float32) for w in weights]
    return bundles


class OpenLoopLoad:
    """Requests at a fixed rate from a process of its own (so the bench's own work never
    delays them); records (start, ms, ok, version) per request. Monotonic clocks are shared
    between processes on Linux, so the parent compares start times with its own."""

    def __init__(self, target: str, rate_rps: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._stop = ctx.Event()
        self._events = ctx.Queue()
        self._out = tempfile.NamedTemporaryFile(suffix=".npy", delete=False)
        self._process = ctx.Process(target=_load_main, args=(target, rate_rps, self._stop, self._events, self._out.name),
                                    daemon=True)
        self.first_start_s: dict[int, float] = {}
        """Start time of the first request each model version answered."""
        self.samples: list[tuple[float, float, bool, int]] = []

    def poll(self) -> None:
        """Take in the versions the load process has seen answer so far."""
        while True:
            try:
                version, started = self._events.get_nowait()
            except queue.Empty:
                return
            self.first_start_s.setdefault(version, started)

    def first_answer_from(self, version: int) -> float | None:
        self.poll()
        return self.first_start_s.get(version)

    def __enter__(self) -> "OpenLoopLoad":
        self._process.start()
        while self.first_answer_from(1) is None:
            if not self._process.is_alive():
                raise RuntimeError("the load process died before its first answer")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._process.join(30)
        self.poll()
        try:
            rows = np.load(self._out.name)
            self.samples = [(float(a), float(b), bool(c), int(d)) for a, b, c, d in rows]
        finally:
            os.unlink(self._out.name)


def _load_main(target: str, rate_rps: float, stop, events, out_path: str) -> None:
    asyncio.run(_load_loop(target, 1.0 / rate_rps, stop, events, out_path))


async def _load_loop(target: str, interval_s: float, stop, events, out_path: str) -> None:
    import grpc

    from protos import edgecascade_pb2 as pb
    from protos import edgecascade_pb2_grpc as pb_grpc
    from shared.tensor_codec import to_proto

    rows: list[tuple[float, float, float, float]] = []
    seen: set[int] = set()
    x = np.random.default_rng(0).standard_normal(INPUT_DIM).astype(np.float32)
    request = pb.InferRequest(tensor=to_proto(x))

    async def one(stub) -> None:
        started = time.monotonic()
        try:
            version = int((await stub.Infer(request, timeout=5.0)).model_version)
            rows.append((started, (time.monotonic() - started) * 1000.0, 1.0, version))
            if version not in seen:
                seen.add(version)
                events.put((version, started))
        except grpc.aio.AioRpcError:
            rows.append((started, (time.monotonic() - started) * 1000.0, 0.0, 0))

    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.EdgeAgentStub(channel)
        tasks: set[asyncio.Task] = set()
        next_s = time.monotonic()
        while not stop.is_set():
            task = asyncio.create_task(one(stub))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_s += interval_s
            await asyncio.sleep(max(0.0, next_s - time.monotonic()))
        await asyncio.gather(*tasks)
    np.save(out_path, np.array(rows, dtype=np.float64).reshape(-1, 4))


class IdleBusyLoop:
    """The control: a process spinning in pure Python at Linux SCHED_IDLE, the lowest CPU
    priority there is, stopped (SIGSTOP) except for short bursts. Its bursts show what any
    background CPU work, at any priority, does to serving latency on this machine: on a VM
    whose two vCPUs share a physical core, even a SCHED_IDLE loop slows the serving threads.
    Not available (None windows) where SCHED_IDLE cannot be set."""

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> "IdleBusyLoop":
        try:
            process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        except OSError:
            return self
        try:
            os.sched_setscheduler(process.pid, os.SCHED_IDLE, os.sched_param(0))
        except (AttributeError, OSError):
            process.kill()
            process.wait()
            return self
        process.send_signal(signal.SIGSTOP)
        self._process = process
        return self

    def burst(self, duration_s: float) -> tuple[float, float] | None:
        """Let it spin for `duration_s`; the (start, end) of the burst, or None without a loop."""
        if self._process is None:
            time.sleep(duration_s)
            return None
        started = time.monotonic()
        self._process.send_signal(signal.SIGCONT)
        time.sleep(duration_s)
        self._process.send_signal(signal.SIGSTOP)
        return started, time.monotonic()

    def __exit__(self, *exc) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()


def _stand_back(router_pid: int) -> None:
    """Run the router and this process (publishing, polling status) at nice 10, so on a shared
    machine their work competes less with the agent and the load, which stand for one board.
    Linux keeps a nice value per thread, so every thread is set (gRPC's I/O threads too);
    threads started later inherit it from the thread that starts them."""
    for pid in (router_pid, os.getpid()):
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:  # not Linux: the process's nice value is all there is
            tids = [pid]
        for tid in tids:
            try:
                os.setpriority(os.PRIO_PROCESS, tid, 10)
            except OSError:
                pass


#: The agent's log line for the first step of an update (edge_agent.updater reports it once
#: the manifest is verified, before the first chunk is asked for).
_DOWNLOADING_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO edge_agent\.updater: "
                               r"update (\w+) \(v(\d+)\): downloading$", re.MULTILINE)


def update_start_times(agent_log: str, monotonic_minus_wall_s: float) -> dict[int, float]:
    """When the agent took up each version's update (monotonic clock), from its log. The log
    stamps wall-clock time to the millisecond; `monotonic_minus_wall_s` maps it across."""
    starts: dict[int, float] = {}
    for stamp, _update_id, version in _DOWNLOADING_LINE.findall(agent_log):
        wall_s = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        starts.setdefault(int(version), wall_s + monotonic_minus_wall_s)
    return starts


def _p(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 3) if values else float("nan")


def run_swap_bench(quick: bool = False, *, swaps: int | None = None, rate_rps: float = 200.0) -> dict[str, Any]:
    from edgecascade.processes import Daemon
    from edgecascade.update_client import publish, rollout_status, router_channel
    from edgecascade.update_package import package_from_bundles
    from shared.delta.signing import keygen, load_private_key

    swaps = swaps or (3 if quick else 20)
    with tempfile.TemporaryDirectory(prefix="bench_swap_") as tmp:
        workdir = Path(tmp)
        bundles = build_versions(workdir / "bundles", swaps + 1)
        keygen(workdir / "key.pem", workdir / "key.pub.pem")
        key = load_private_key(workdir / "key.pem")
        packages = [package_from_bundles(new, old, key) for old, new in zip(bundles, bundles[1:])]
        cloud = {"model_dirs": [str(bundles[0])]}
        edge = {"bundle_dir": str(bundles[0]), "update_public_key": str(workdir / "key.pub.pem"),
                "state_dir": str(workdir / "state"), "agent_id": "bench-agent", "update_poll_interval_s": 0.05,
                "update_health_window_s": 0.2, "update_health_requests": 10_000}
        steady_windows: list[tuple[float, float]] = []
        busy_windows: list[tuple[float, float]] = []
        publish_windows: list[tuple[int, float, float]] = []
        """(version, publish time, first answer of that version + SWAP_TAIL_S)"""
        update_s: list[float] = []
        load_avg = [round(x, 2) for x in os.getloadavg()]
        clock_offset_s = time.monotonic() - time.time()
        with Daemon("cloud", cloud, workdir, name="router") as router:
            edge["cloud_target"] = router.target
            with Daemon("edge", edge, workdir, name="agent") as agent, OpenLoopLoad(agent.target, rate_rps) as load, \
                    router_channel(router.target) as channel, IdleBusyLoop() as busy_loop:
                # one channel: no set-up cost per status poll; the cloud and the operator are
                # other machines in real life
                _stand_back(router.process.pid)
                time.sleep(WARM_UP_S)
                for version, package in enumerate(packages, start=2):
                    steady_start = time.monotonic()
                    time.sleep(STEADY_WINDOW_S)
                    steady_windows.append((steady_start, time.monotonic()))
                    if (burst := busy_loop.burst(BUSY_BURST_S)) is not None:
                        busy_windows.append(burst)
                    time.sleep(BUSY_GAP_S)
                    started = time.monotonic()
                    update_id = publish(router.target, package, channel=channel).update_id
                    while (first := load.first_answer_from(version)) is None:
                        if time.monotonic() - started > 60:
                            raise TimeoutError(f"agent did not swap to v{version} within 60 s:\n{agent.logs()[-2000:]}")
                        time.sleep(0.01)
                    publish_windows.append((version, started, first + SWAP_TAIL_S))
                    update_s.append(first - started)
                    while not any(a.update_id == update_id and a.state == "healthy"
                                  for a in rollout_status(router.target, channel=channel).agents):
                        time.sleep(STATUS_POLL_S)
                    time.sleep(SETTLE_S)
                agent_log = agent.logs()
        clock_offset_s = (clock_offset_s + time.monotonic() - time.time()) / 2
        taken_up = update_start_times(agent_log, clock_offset_s)
        missing = [v for v, _, _ in publish_windows if v not in taken_up]
        if missing:
            raise RuntimeError(f"the agent's log has no 'downloading' line for versions {missing}")
        swap_windows = [(taken_up[v], end) for v, _, end in publish_windows]
        cloud_windows = [(start, taken_up[v]) for v, start, _ in publish_windows]
        load_avg += [round(x, 2) for x in os.getloadavg()]

    def latencies(windows: list[tuple[float, float]]) -> list[float]:
        return [ms for s, ms, ok, _ in load.samples if ok and any(a <= s <= b for a, b in windows)]

    swap_ms, steady_ms = latencies(swap_windows), latencies(steady_windows)
    publish_ms, cloud_ms = latencies([(a, b) for _, a, b in publish_windows]), latencies(cloud_windows)
    busy_ms = latencies(busy_windows)
    p99_steady, p99_swap = _p(steady_ms, 99), _p(swap_ms, 99)
    # The headline p99 over all swap requests (~31 per swap) is decided by a handful of them,
    # so one stall anywhere on the machine moves it; the p99 of each swap's own requests, and
    # its median over the swaps, shows whether swaps are slow in general or one was.
    per_swap_p99 = [_p(latencies([window]), 99) for window in swap_windows]
    failed = sum(1 for s in load.samples if not s[2])
    return {
        "swaps": swaps,
        "failed_requests": failed,
        "p99_steady_ms": p99_steady,
        "p99_swap_ms": p99_swap,
        "p50_steady_ms": _p(steady_ms, 50),
        "p50_swap_ms": _p(swap_ms, 50),
        "per_swap_p99_ms_median": round(statistics.median(per_swap_p99), 3),
        "per_swap_p99_ms_max": max(per_swap_p99),
        "p99_publish_to_swap_ms": _p(publish_ms, 99),
        "p99_publish_to_takeup_ms": _p(cloud_ms, 99),
        "requests_steady": len(steady_ms),
        "requests_swap": len(swap_ms),
        "requests_publish_to_takeup": len(cloud_ms),
        "control_idle_busy_loop": {
            "p99_ms": _p(busy_ms, 99),
            "p50_ms": _p(busy_ms, 50),
            "requests": len(busy_ms),
            "p99_ratio_to_steady": round(_p(busy_ms, 99) / p99_steady, 3) if busy_ms else None,
        },
        "takeup_after_publish_s_median": round(statistics.median(b - a for a, b in cloud_windows), 3),
        "rate_rps": rate_rps,
        "publish_to_new_version_s_median": round(statistics.median(update_s), 3),
        "model_bytes": packages[0].manifest.target_size,
        "patch_bytes_median": int(statistics.median(len(p.payload) for p in packages)),
        "load_average_before_after": load_avg,
        "checks": {"no_failed_requests": failed == 0, "p99_swap_le_1.5x_steady": p99_swap <= 1.5 * p99_steady},
    }
