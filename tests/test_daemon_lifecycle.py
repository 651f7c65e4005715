"""Health, reflection, graceful SIGTERM drain, torch-free edge, committed generated code."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from edgecascade import Client
from edgecascade.processes import Daemon
from tests.helpers.bundles import CONFIDENT, UNSURE


def test_health_and_reflection(edge_daemon, cloud_daemon):
    expected = {edge_daemon.target: "edgecascade.v1.EdgeAgent", cloud_daemon.target: "edgecascade.v1.CloudRouter"}
    for target, service in expected.items():
        with grpc.insecure_channel(target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", service):
                assert health.Check(health_pb2.HealthCheckRequest(service=name), timeout=2).status == health_pb2.HealthCheckResponse.SERVING
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            (answer,) = list(reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=2))
            names = {s.name for s in answer.list_services_response.service}
            assert {service, "grpc.health.v1.Health"} <= names


def test_sigterm_drains_in_flight_requests(tmp_path, bundles):
    # The cloud batcher waits 400 ms per batch, so deferred requests are in flight when SIGTERM lands.
    cloud = Daemon("cloud", {"model_dirs": [str(bundles["cloud"])], "max_delay_ms": 400.0, "max_batch_size": 64},
                   tmp_path, name="cloud").start()
    with Daemon("edge", {"bundle_dir": str(bundles["edge"]), "cloud_target": cloud.target}, tmp_path) as edge:
        results, errors = [], []

        def call():
            try:
                with Client(cloud.target, service="router") as client:
                    results.append(client.infer(UNSURE, timeout_s=5))
            except Exception as exc:
                errors.append(exc)

        threads = [threading.Thread(target=call) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.2)
        started = time.monotonic()
        returncode = cloud.stop()
        for t in threads:
            t.join()
        assert errors == [] and len(results) == 8      # every in-flight request finished
        assert returncode == 0 and time.monotonic() - started < 5
        # the edge keeps answering after the cloud left
        with Client(edge.target) as client:
            assert client.infer(UNSURE).served_by == "edge_fallback"


def test_edge_agent_runs_without_torch(tmp_path, bundles):
    script = f"""
import sys
sys.modules['torch'] = None
import edge_agent, edge_agent.daemon, edgecascade.cli
from edge_agent.settings import EdgeSettings
from edge_agent.daemon import build_cascade
import asyncio, numpy as np
cascade = build_cascade(EdgeSettings(bundle_dir={str(bundles['edge'])!r}, cloud_target=None))
result = asyncio.run(cascade.infer(np.array([4, 0, 0], np.float32), deadline_s=9e9, request_id='x'))
assert result.route == 'edge', result
assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]
print('ok')
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    # and as a daemon process, with torch made unimportable
    with Daemon("edge", {"bundle_dir": str(bundles["edge"]), "cloud_target": None}, tmp_path,
                env={"PYTHONPATH": str(_torch_blocker(tmp_path))}) as edge:
        with Client(edge.target) as client:
            assert client.infer(CONFIDENT).served_by == "edge"


def _torch_blocker(tmp_path):
    """A sitecustomize that makes `import torch` fail in every child process."""
    import os

    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\n")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return f"{blocker}{os.pathsep}{repo}"


def test_generated_proto_code_is_up_to_date():
    out = subprocess.run([sys.executable, "-m", "protos.generate", "--check"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
