"""`edgecascade bench soak`: many concurrent SDK clients against an edge agent and two cloud
routers scheduling through a real Redis, for a bounded time, then chaos steps under the same load.

The set-up (every process real, on loopback):

    SDK clients --> edge agent --chaos proxy--> router A (front end + worker) --Redis--> worker B

Each request has its own id and the caller's deadline (`--deadline-ms`). The soak records, for
the steady part: requests, lost requests (no final answer within deadline + 5 s), duplicate or
mismatched answers, errors, latency percentiles, answers by route, answers later than the
deadline, and each daemon's resident memory after warm-up and at the end. Then, with
`--chaos`, each step runs under load and is recorded the same way: the cloud slow (every reply
held back 300 ms), unreachable, flapping; Redis restarted; worker B SIGKILLed; a signed model
update pushed to the agent. A last step checks the cloud path came back.

The edge model is a tiny ONNX softmax (half the traffic is confident, half deferred); the cloud
model is the sleep model (5 ms per batch), so the run measures the framework, not a model.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from benchmarks.common import RESULTS_DIR, machine_description

DEFAULT_OUT = RESULTS_DIR / "soak.json"
CONFIDENT = np.array([4.0, 0.0, 0.0], dtype=np.float32)
UNSURE = np.array([0.2, 0.1, 0.0], dtype=np.float32)
LABELS = ["a", "b", "c"]
#: A call with no answer this long after its deadline counts as lost.
LOST_AFTER_S = 5.0


# ------------------------------------------------------------------------------- recording


@dataclass
class PhaseRecord:
    sent: int = 0
    answered: int = 0
    errors: Counter = field(default_factory=Counter)
    routes: Counter = field(default_factory=Counter)
    versions: Counter = field(default_factory=Counter)
    latencies_ms: list = field(default_factory=list)
    late: int = 0
    mismatched: int = 0


class Recorder:
    """Every request id the clients send, and every final answer, by phase."""

    def __init__(self, deadline_ms: float) -> None:
        self.deadline_ms = deadline_ms
        self.phase = "warmup"
        self.phases: dict[str, PhaseRecord] = {}
        self._answers: dict[str, int] = {}
        self._phase_of: dict[str, str] = {}
        self.duplicates = 0

    def sent(self, request_id: str) -> str:
        phase = self.phase
        self.phases.setdefault(phase, PhaseRecord()).sent += 1
        self._answers[request_id] = 0
        self._phase_of[request_id] = phase
        return phase

    def answered(self, request_id: str, phase: str, latency_ms: float, *, route: str = "", error: str = "",
                 version: str = "", echoed_id: Optional[str] = None) -> None:
        record = self.phases[phase]
        count = self._answers.get(request_id, 0) + 1
        self._answers[request_id] = count
        if count > 1:
            self.duplicates += 1
        record.answered += 1
        if echoed_id is not None and echoed_id != request_id:
            record.mismatched += 1
        if error:
            record.errors[error] += 1
        else:
            record.routes[route] += 1
            record.versions[version] += 1
        record.latencies_ms.append(latency_ms)
        if latency_ms > self.deadline_ms:
            record.late += 1

    def lost_ids(self, phase: Optional[str] = None) -> list[str]:
        return [rid for rid, n in self._answers.items() if n == 0 and (phase is None or self._phase_of[rid] == phase)]

    def summary(self, phase: str, duration_s: float) -> dict[str, Any]:
        record = self.phases.get(phase, PhaseRecord())
        latencies = np.asarray(record.latencies_ms) if record.latencies_ms else np.zeros(1)
        errors = sum(record.errors.values())
        return {
            "duration_s": round(duration_s, 2),
            "requests": record.sent,
            "answered": record.answered,
            "lost": len(self.lost_ids(phase)),
            "errors": errors,
            "error_rate": round(errors / record.sent, 6) if record.sent else 0.0,
            "errors_by_class": dict(record.errors),
            "mismatched_ids": record.mismatched,
            "rps": round(record.answered / duration_s, 1) if duration_s > 0 else 0.0,
            "p50_ms": round(float(np.percentile(latencies, 50)), 2),
            "p99_ms": round(float(np.percentile(latencies, 99)), 2),
            "max_ms": round(float(latencies.max()), 2),
            "late": record.late,
            "deadline_kept": record.late == 0 and not record.errors.get("DeadlineError"),
            "routes": dict(sorted(record.routes.items())),
            "model_versions": dict(record.versions),
        }


# ----------------------------------------------------------------------------------- load


class Load:
    """`clients` SDK clients in a thread of their own, each sending one request at a time."""

    def __init__(self, target: str, recorder: Recorder, *, clients: int, deadline_s: float, think_s: float) -> None:
        self.target = target
        self.recorder = recorder
        self.clients = clients
        self.deadline_s = deadline_s
        self.think_s = think_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="soak-load", daemon=True)

    def start(self) -> "Load":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.deadline_s + LOST_AFTER_S + 30)

    async def _main(self) -> None:
        await asyncio.gather(*(self._client(k) for k in range(self.clients)))

    async def _client(self, k: int) -> None:
        from shared.errors import EdgecascadeError
        from shared.sdk import AsyncClient

        rng = np.random.default_rng(k)
        async with AsyncClient(self.target, timeout_s=self.deadline_s) as client:
            seq = 0
            while not self._stop.is_set():
                request_id = f"soak-{k}-{seq}"
                seq += 1
                value = CONFIDENT if rng.random() < 0.5 else UNSURE
                phase = self.recorder.sent(request_id)
                started = time.perf_counter()
                try:
                    result = await asyncio.wait_for(client.infer(value, request_id=request_id),
                                                    self.deadline_s + LOST_AFTER_S)
                except asyncio.TimeoutError:
                    continue  # no final answer: lost
                except EdgecascadeError as exc:
                    self.recorder.answered(request_id, phase, (time.perf_counter() - started) * 1000.0,
                                           error=type(exc).__name__)
                else:
                    route = result.served_by + (f"/{result.fallback_reason}" if result.fallback_reason else "")
                    self.recorder.answered(request_id, phase, (time.perf_counter() - started) * 1000.0, route=route,
                                           version=f"{result.model_name} v{result.model_version}",
                                           echoed_id=result.request_id)
                if self.think_s:
                    await asyncio.sleep(self.think_s)


# -------------------------------------------------------------------------------- daemons


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _edge_bundle(bundle_dir: Path, *, version: int, scale: float) -> Path:
    import onnx
    from onnx import TensorProto, helper

    from shared.model_card import InputSpec, ModelCard, save_card
    from shared.policy import PolicyFile, save_policy

    bundle_dir.mkdir(parents=True, exist_ok=True)
    weights = (np.eye(3, dtype=np.float32) * np.float32(scale)).flatten().tolist()
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["logits"]), helper.make_node("Softmax", ["logits"], ["probs"], axis=1)],
        "soak-edge",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, 3])],
        initializer=[helper.make_tensor("W", TensorProto.FLOAT, [3, 3], weights)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, bundle_dir / "model.onnx")
    save_card(bundle_dir, ModelCard(name="soak-edge", version=version, labels=LABELS, runtime="onnx",
                                    input=InputSpec(kind="tensor", dtype="float32", shape=[3])))
    save_policy(bundle_dir, PolicyFile(model_name="soak-edge", model_version=version, labels=LABELS, threshold=0.6))
    return bundle_dir


@dataclass
class Cluster:
    redis: Any
    router: Any
    worker: Any
    edge: Any
    proxy: Any
    versions: dict
    key: Any

    def daemons(self) -> dict[str, Any]:
        return {"edge": self.edge, "router": self.router, "worker": self.worker}

    def rss(self) -> dict[str, int]:
        out = {name: rss_bytes(d.process.pid) for name, d in self.daemons().items() if d.process.poll() is None}
        out["redis"] = rss_bytes(self.redis.process.pid) if self.redis.process.poll() is None else 0
        return out

    def stop(self) -> None:
        for daemon in (self.edge, self.worker, self.router):
            if daemon is not None:
                daemon.stop()
        if self.proxy is not None:
            self.proxy.close()
        if self.redis is not None:
            self.redis.stop()


def start_cluster(work: Path, *, claim_idle_ms: int) -> Cluster:
    from benchmarks.chaos_proxy import ChaosProxy
    from benchmarks.redis_process import RedisServer
    from cloud_router.sleep_model import write_sleep_bundle
    from edgecascade.processes import Daemon
    from shared.delta.signing import keygen, load_private_key
    from shared.model_card import InputSpec

    versions = {v: _edge_bundle(work / f"edge-v{v}", version=v, scale=1.0 + 0.25 * (v - 1)) for v in (1, 2)}
    cloud = write_sleep_bundle(work / "cloud", name="soak-cloud", labels=LABELS, batch_service_ms=5.0,
                               input_spec=InputSpec(kind="tensor", dtype="float32", shape=[3]))
    private, public = keygen(work / "update.pem", work / "update.pub.pem")
    cluster = Cluster(None, None, None, None, None, versions, load_private_key(private))
    try:
        cluster.redis = RedisServer(work / "redis").start()
        common = {"model_dirs": [str(cloud)], "redis_url": cluster.redis.url, "redis_prefix": "soak",
                  "redis_claim_idle_ms": claim_idle_ms, "max_delay_ms": 2.0, "redis_block_ms": 200, "plaintext": True}
        cluster.router = Daemon("cloud", {**common, "router_id": "router-a"}, work, name="router").start()
        cluster.worker = Daemon("cloud", {**common, "router_id": "worker-b", "role": "worker"}, work,
                                name="worker").start()
        cluster.proxy = ChaosProxy(cluster.router.target)
        edge_settings = {"bundle_dir": str(versions[1]), "cloud_target": cluster.proxy.target, "agent_id": "soak-edge",
                         "breaker_failure_threshold": 3, "breaker_cooldown_s": 0.5, "heartbeat_interval_s": 0.5,
                         "update_public_key": str(public), "state_dir": str(work / "edge-state"),
                         "update_poll_interval_s": 0.2, "update_health_window_s": 1.0, "update_health_requests": 50,
                         "plaintext": True}
        cluster.edge = Daemon("edge", edge_settings, work, name="edge").start()
    except BaseException:
        cluster.stop()
        raise
    return cluster


# ---------------------------------------------------------------------------------- chaos


def _steps(cluster: Cluster, step_s: float) -> list[tuple[str, Callable[[], None]]]:
    proxy = cluster.proxy

    def slow() -> None:
        proxy.slow(0.3)
        time.sleep(step_s)
        proxy.restore()

    def unreachable() -> None:
        proxy.cut()
        time.sleep(step_s)
        proxy.restore()

    def flapping() -> None:
        end = time.monotonic() + step_s
        while time.monotonic() < end:
            proxy.cut()
            time.sleep(0.25)
            proxy.restore()
            time.sleep(0.25)

    def redis_restart() -> None:
        cluster.redis.restart(down_s=0.5)
        time.sleep(step_s)

    def worker_sigkill() -> None:
        cluster.worker.kill()
        time.sleep(step_s)

    def update() -> None:
        from edgecascade.update_client import publish
        from edgecascade.update_package import package_from_bundles

        package = package_from_bundles(cluster.versions[2], cluster.versions[1], cluster.key)
        publish(cluster.router.target, package)
        time.sleep(step_s)

    def recovered() -> None:
        time.sleep(step_s)

    return [("cloud_slow", slow), ("cloud_unreachable", unreachable), ("cloud_flapping", flapping),
            ("redis_restart", redis_restart), ("worker_sigkill", worker_sigkill), ("update_mid_load", update),
            ("recovered", recovered)]


# ------------------------------------------------------------------------------------ run


def run_soak(out: Optional[Path] = DEFAULT_OUT, *, duration_s: float = 300.0, clients: int = 32,
             deadline_ms: float = 1000.0, think_ms: float = 5.0, warmup_s: Optional[float] = None, chaos: bool = True,
             step_s: float = 10.0, claim_idle_ms: int = 300, work_dir: Optional[Path] = None,
             progress: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Run the soak (and the chaos steps); write the JSON to `out` unless it is None."""
    warmup_s = warmup_s if warmup_s is not None else min(30.0, max(1.0, duration_s * 0.1))
    with tempfile.TemporaryDirectory(prefix="edgecascade-soak-") as tmp:
        work = Path(work_dir or tmp)
        cluster = start_cluster(work, claim_idle_ms=claim_idle_ms)
        recorder = Recorder(deadline_ms)
        load = Load(cluster.edge.target, recorder, clients=clients, deadline_s=deadline_ms / 1000.0,
                    think_s=think_ms / 1000.0)
        phases: dict[str, dict] = {}
        try:
            load.start()
            progress(f"warm-up {warmup_s:.0f} s")
            time.sleep(warmup_s)
            rss_start = cluster.rss()
            recorder.phase = "steady"
            progress(f"steady load for {duration_s:.0f} s with {clients} clients")
            started = time.monotonic()
            rss_samples = []
            while time.monotonic() - started < duration_s:
                time.sleep(min(5.0, max(0.0, duration_s - (time.monotonic() - started))))
                rss_samples.append(cluster.rss())
            steady_s = time.monotonic() - started
            rss_end = cluster.rss()
            if chaos:
                for name, step in _steps(cluster, step_s):
                    progress(f"chaos: {name}")
                    phase_started = time.monotonic()
                    recorder.phase = name
                    step()
                    phases[name] = {"duration_s": time.monotonic() - phase_started}
            recorder.phase = "drain"
        finally:
            load.stop()
            logs = {name: d.logs() for name, d in cluster.daemons().items()}
            cluster.stop()
    steady = recorder.summary("steady", steady_s)
    chaos_steps = [{"step": name, **recorder.summary(name, info["duration_s"])} for name, info in phases.items()]
    daemons = {}
    for name in rss_start:
        if not rss_start[name]:
            continue
        end = rss_end.get(name, 0)
        daemons[name] = {"rss_start_mb": round(rss_start[name] / 2**20, 2), "rss_end_mb": round(end / 2**20, 2),
                         "rss_max_mb": round(max([s.get(name, 0) for s in rss_samples] + [end]) / 2**20, 2),
                         "rss_growth": round(end / rss_start[name] - 1.0, 4) if end else None}
    result = {
        "benchmark": "soak",
        "setup": {"clients": clients, "deadline_ms": deadline_ms, "think_ms": think_ms, "warmup_s": warmup_s,
                  "duration_s": duration_s, "chaos_step_s": step_s if chaos else None, "claim_idle_ms": claim_idle_ms,
                  "edge": "tiny ONNX softmax, half the inputs deferred", "cloud": "sleep model, 5 ms per batch",
                  "scheduling": "Redis Streams: router A (front end + worker) and worker B",
                  "machine": machine_description(), "load_average_at_end": _load_average()},
        "requests": steady["requests"],
        "lost": steady["lost"],
        "errors": steady["errors"],
        "p99_ms": steady["p99_ms"],
        "rss_growth": {name: info["rss_growth"] for name, info in daemons.items()},
        "steady": steady,
        "daemons": daemons,
        "chaos": chaos_steps,
        "duplicate_answers": recorder.duplicates,
        "lost_total": len(recorder.lost_ids()),
        "lost_in_chaos": sum(step["lost"] for step in chaos_steps),
        "tracebacks_in_logs": {name: text.count("Traceback") for name, text in logs.items()},
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _load_average() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []
