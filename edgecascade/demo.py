"""`edgecascade demo`: the cascade end to end on one machine.

Builds (first run) or loads the cached demo model pair, measures edge-only and cloud-only
accuracy offline, starts a cloud router and two edge agents on loopback ports, replays the
test split through the SDK, and reports accuracy, route shares and latency per route.
"""

from __future__ import annotations

import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import numpy as np

from edgecascade.plots import plot_deferral_curve
from edgecascade.processes import Daemon
from shared.sdk import Client

ROUTES = ("edge", "cloud", "edge_fallback")


def offline_predictions(bundle_dir: Path, inputs: list, *, edge: bool) -> np.ndarray:
    """Probabilities of a bundle's model over all inputs, in-process (no daemon)."""
    from cloud_router.model_runtimes import load_cloud_model
    from shared.model_loader import load_model

    model = load_model(bundle_dir, edge=True) if edge else load_cloud_model(bundle_dir)
    model.load()
    return np.concatenate([model.predict(inputs[i:i + 256]) for i in range(0, len(inputs), 256)])


def percentile_ms(values: list[float], q: float) -> Optional[float]:
    return round(float(np.percentile(values, q)), 3) if values else None


def replay(targets: list[str], inputs: list, *, concurrency: int, timeout_s: float, progress: bool) -> list[tuple[Any, float]]:
    """Send every input through the SDK, spread over the agents; (result, latency_ms) in input order."""
    from tqdm import tqdm

    clients = [Client(t, timeout_s=timeout_s) for t in targets]

    def one(i: int):
        started = time.perf_counter()
        result = clients[i % len(clients)].infer(inputs[i], request_id=f"demo-{i}")
        return result, (time.perf_counter() - started) * 1000.0

    try:
        with ThreadPoolExecutor(concurrency) as pool:
            return list(tqdm(pool.map(one, range(len(inputs))), total=len(inputs), desc="replaying test split",
                             unit="req", disable=not progress))
    finally:
        for client in clients:
            client.close()


def run_demo(out_dir: Path, *, cache_dir: Optional[Path] = None, agents: int = 2, concurrency: int = 8,
             limit: Optional[int] = None, progress: bool = True) -> dict:
    from edgecascade.offline.cascade_metrics import cascade_at_threshold, cascade_report
    from edgecascade.offline.demo_models import ensure_demo_models
    from shared.policy import load_policy
    from shared.signals import confidence_scores

    pair = ensure_demo_models(cache_dir)
    inputs, gold = pair.test_inputs, pair.test_labels
    if limit:
        inputs, gold = inputs[:limit], gold[:limit]
    inputs = list(inputs)
    edge_probs = offline_predictions(pair.edge_dir, inputs, edge=True)
    cloud_probs = offline_predictions(pair.cloud_dir, inputs, edge=False)
    policy = load_policy(pair.edge_dir / "policy.json").spec
    scores = confidence_scores(edge_probs, policy.signal)
    report = cascade_report(scores, edge_probs.argmax(1), cloud_probs.argmax(1), gold)
    offline = cascade_at_threshold(scores, edge_probs.argmax(1), cloud_probs.argmax(1), policy.threshold, gold)

    with tempfile.TemporaryDirectory(prefix="edgecascade-demo-") as work:
        daemons: list[Daemon] = []
        try:
            # Loopback only, one process tree: plaintext, configured explicitly (each daemon warns).
            cloud = Daemon("cloud", {"model_dirs": [str(pair.cloud_dir)], "max_delay_ms": 2.0, "plaintext": True},
                           Path(work), name="cloud").start()
            daemons.append(cloud)
            for i in range(agents):
                daemons.append(Daemon("edge", {"bundle_dir": str(pair.edge_dir), "cloud_target": cloud.target,
                                               "agent_id": f"demo-edge-{i}", "plaintext": True},
                                      Path(work), name=f"edge{i}").start())
            results = replay([d.target for d in daemons[1:]], inputs, concurrency=concurrency, timeout_s=5.0, progress=progress)
        finally:
            for daemon in reversed(daemons):
                daemon.stop()

    labels = np.array([r.label for r, _ in results])
    routes = [r.served_by for r, _ in results]
    latency = {route: [ms for (r, ms) in results if r.served_by == route] for route in ROUTES}
    summary = {
        "n": len(inputs),
        "edge_only_accuracy": round(report.edge_accuracy, 4),
        "cloud_only_accuracy": round(report.cloud_accuracy, 4),
        "oracle_accuracy": round(report.oracle_accuracy, 4),
        "cascade_accuracy": round(float((labels == np.asarray(gold)).mean()), 4),
        "offline_cascade_accuracy": round(offline.accuracy, 4),
        "deferral_rate": round(sum(r != "edge" for r in routes) / len(routes), 4),
        "routes": {route: routes.count(route) for route in ROUTES},
        "latency_ms": {route: {"p50": percentile_ms(latency[route], 50), "p99": percentile_ms(latency[route], 99)} for route in ROUTES},
        "threshold": policy.threshold,
        "signal": policy.signal,
        "apgr": None if report.apgr is None else round(report.apgr, 4),
        "curve": [[round(float(a), 4), round(float(b), 4)] for a, b in report.curve[:: max(1, len(report.curve) // 200)]],
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_deferral_curve(report.curve, {
        "edge only": (0.0, report.edge_accuracy),
        "cloud only": (1.0, report.cloud_accuracy),
        "cascade (live)": (summary["deferral_rate"], summary["cascade_accuracy"]),
    }, out_dir / "deferral_curve.png", title="edgecascade demo: digits")
    return summary


def format_table(summary: dict) -> str:
    rows = [
        ("edge-only accuracy", f"{summary['edge_only_accuracy']:.4f}"),
        ("cloud-only accuracy", f"{summary['cloud_only_accuracy']:.4f}"),
        ("cascade accuracy", f"{summary['cascade_accuracy']:.4f}"),
        ("deferral rate", f"{summary['deferral_rate']:.1%}"),
    ]
    lines = [f"{name:<22}{value:>10}" for name, value in rows]
    lines += ["", f"{'route':<16}{'share':>8}{'count':>8}{'p50 ms':>10}{'p99 ms':>10}"]
    for route in ROUTES:
        count = summary["routes"][route]
        lat = summary["latency_ms"][route]
        lines.append(f"{route:<16}{count / summary['n']:>8.1%}{count:>8}{_ms_cell(lat['p50'])}{_ms_cell(lat['p99'])}")
    return "\n".join(lines)


def _ms_cell(value) -> str:
    return f"{value:>10.2f}" if value is not None else f"{'-':>10}"


DEFAULT_ROUTER_LISTEN = "127.0.0.1:50051"
DEFAULT_AGENT_LISTEN = "127.0.0.1:50061"


def serve_demo(work_dir: Path, *, router_listen: str = DEFAULT_ROUTER_LISTEN, agent_listen: str = DEFAULT_AGENT_LISTEN,
               update_public_key: Optional[Path] = None, cache_dir: Optional[Path] = None,
               on_ready=None, stop_when=None) -> None:
    """Start a cloud router and one edge agent on the demo pair and keep them up until Ctrl-C or
    SIGTERM (or until `stop_when()` is true). Configs, logs and the agent's update state go to
    `work_dir`. With `update_public_key` the agent takes signed updates (`update push`), polling
    every 2 s and trusting a new model after 5 s or 20 requests without an error."""
    import signal

    from edgecascade.offline.demo_models import ensure_demo_models
    from shared.listen import check_can_listen

    for listen in (router_listen, agent_listen):
        check_can_listen(listen)
    pair = ensure_demo_models(cache_dir)
    work_dir = Path(work_dir)
    edge_settings: dict[str, Any] = {"bundle_dir": str(pair.edge_dir), "listen": agent_listen, "agent_id": "demo-edge"}
    if update_public_key is not None:
        edge_settings.update(update_public_key=str(Path(update_public_key).resolve()), state_dir=str(work_dir / "edge-state"),
                             update_poll_interval_s=2.0, update_health_window_s=5.0, update_health_requests=20)
    daemons: list[Daemon] = []
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        cloud = Daemon("cloud", {"model_dirs": [str(pair.cloud_dir)], "listen": router_listen, "max_delay_ms": 2.0},
                       work_dir, name="cloud").start()
        daemons.append(cloud)
        edge_settings["cloud_target"] = cloud.target
        daemons.append(Daemon("edge", edge_settings, work_dir, name="edge").start())
        if on_ready is not None:
            on_ready(pair, cloud, daemons[1])
        while all(d.process.poll() is None for d in daemons):
            if stop_when is not None and stop_when():
                return
            time.sleep(0.2)
        dead = next(d for d in daemons if d.process.poll() is not None)
        from shared.errors import UnavailableError

        raise UnavailableError(f"the demo {dead.name} daemon exited with code {dead.process.returncode}; "
                               f"its log: {dead.log_path}")
    except KeyboardInterrupt:
        return
    finally:
        signal.signal(signal.SIGTERM, previous)
        for daemon in reversed(daemons):
            daemon.stop()
