"""Hot-swap benchmark: model updates through a real router and agent under steady load.

An open-loop client sends `rate_rps` requests per second (evenly spaced) to the agent the
whole time. After a steady phase, the bench publishes `swaps` signed updates one after the
other (v1 -> v2 -> ... ; an ONNX MLP whose weights all move a little each time) and waits for
the agent to report each one healthy.

Before each publish comes a steady window of `STEADY_WINDOW_S`, so steady and swap requests
meet the same background load (on a shared machine it drifts). A request is a *swap*
request when it starts inside a swap window: from the publish until the first answer from
the new version plus `SWAP_TAIL_S` (the whole update: notice, download, apply in a child
process, load, warm-up, golden check, swap). It is *steady* when it starts inside a steady
window. Reported: failed requests (all of them, any window), p50/p99 latency of each set,
and the time from publish to the first answer of the new version.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

SWAP_TAIL_S = 0.1
WARM_UP_S = 2.0
STEADY_WINDOW_S = 1.0
SETTLE_S = 0.3
HIDDEN = 512
INPUT_DIM = 256


def _write_bundle(directory: Path, version: int, weights: list[np.ndarray]) -> Path:
    from edgecascade.bench_delta import _mlp_to_onnx
    from shared.model_card import InputSpec, ModelCard, save_card
    from shared.policy import PolicyFile, save_policy

    directory.mkdir(parents=True)
    labels = [f"c{i}" for i in range(weights[-1].shape[0])]
    _mlp_to_onnx(weights[0::2], weights[1::2], directory / "model.onnx")
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
    """Requests at a fixed rate from an asyncio loop in a thread; records (start, ms, ok, version)."""

    def __init__(self, target: str, rate_rps: float) -> None:
        self.target = target
        self.interval_s = 1.0 / rate_rps
        self.samples: list[tuple[float, float, bool, int]] = []
        self.first_start_s: dict[int, float] = {}
        """Start time of the first request each model version answered."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _one(self, stub, request) -> None:
        import grpc

        started = time.monotonic()
        try:
            reply = await stub.Infer(request, timeout=5.0)
            version = int(reply.model_version)
            self.samples.append((started, (time.monotonic() - started) * 1000.0, True, version))
            self.first_start_s.setdefault(version, started)
        except grpc.aio.AioRpcError:
            self.samples.append((started, (time.monotonic() - started) * 1000.0, False, 0))

    async def _run(self) -> None:
        import grpc

        from protos import edgecascade_pb2 as pb
        from protos import edgecascade_pb2_grpc as pb_grpc
        from shared.tensor_codec import to_proto

        x = np.random.default_rng(0).standard_normal(INPUT_DIM).astype(np.float32)
        request = pb.InferRequest(tensor=to_proto(x))
        async with grpc.aio.insecure_channel(self.target) as channel:
            stub = pb_grpc.EdgeAgentStub(channel)
            tasks: set[asyncio.Task] = set()
            next_s = time.monotonic()
            while not self._stop.is_set():
                task = asyncio.create_task(self._one(stub, request))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                next_s += self.interval_s
                await asyncio.sleep(max(0.0, next_s - time.monotonic()))
            await asyncio.gather(*tasks)

    def __enter__(self) -> "OpenLoopLoad":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)


def _p(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 3) if values else float("nan")


def run_swap_bench(quick: bool = False, *, swaps: int | None = None, rate_rps: float = 200.0) -> dict[str, Any]:
    from edgecascade.processes import Daemon
    from edgecascade.update_client import publish, rollout_status
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
        swap_windows: list[tuple[float, float]] = []
        update_s: list[float] = []
        load_avg = [round(x, 2) for x in os.getloadavg()]
        with Daemon("cloud", cloud, workdir, name="router") as router:
            edge["cloud_target"] = router.target
            with Daemon("edge", edge, workdir, name="agent") as agent, OpenLoopLoad(agent.target, rate_rps) as load:
                time.sleep(WARM_UP_S)
                for version, package in enumerate(packages, start=2):
                    steady_start = time.monotonic()
                    time.sleep(STEADY_WINDOW_S)
                    steady_windows.append((steady_start, time.monotonic()))
                    started = time.monotonic()
                    update_id = publish(router.target, package).update_id
                    while (first := load.first_start_s.get(version)) is None:
                        if time.monotonic() - started > 60:
                            raise TimeoutError(f"agent did not swap to v{version} within 60 s:\n{agent.logs()[-2000:]}")
                        time.sleep(0.01)
                    swap_windows.append((started, first + SWAP_TAIL_S))
                    update_s.append(first - started)
                    while not any(a.update_id == update_id and a.state == "healthy" for a in rollout_status(router.target).agents):
                        time.sleep(0.02)
                    time.sleep(SETTLE_S)
        load_avg += [round(x, 2) for x in os.getloadavg()]

    def within(start: float, windows: list[tuple[float, float]]) -> bool:
        return any(a <= start <= b for a, b in windows)

    swap_ms = [ms for s, ms, ok, _ in load.samples if ok and within(s, swap_windows)]
    steady_ms = [ms for s, ms, ok, _ in load.samples if ok and within(s, steady_windows)]
    p99_steady, p99_swap = _p(steady_ms, 99), _p(swap_ms, 99)
    failed = sum(1 for s in load.samples if not s[2])
    return {
        "swaps": swaps,
        "failed_requests": failed,
        "p99_steady_ms": p99_steady,
        "p99_swap_ms": p99_swap,
        "p50_steady_ms": _p(steady_ms, 50),
        "p50_swap_ms": _p(swap_ms, 50),
        "requests_steady": len(steady_ms),
        "requests_swap": len(swap_ms),
        "rate_rps": rate_rps,
        "publish_to_new_version_s_median": round(statistics.median(update_s), 3),
        "model_bytes": packages[0].manifest.target_size,
        "patch_bytes_median": int(statistics.median(len(p.payload) for p in packages)),
        "load_average_before_after": load_avg,
        "checks": {"no_failed_requests": failed == 0, "p99_swap_le_1.5x_steady": p99_swap <= 1.5 * p99_steady},
    }
