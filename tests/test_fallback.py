"""Breaker and fallback: a dead cloud never fails a call; a revived cloud gets deferrals again."""

from __future__ import annotations

import threading
import time

from edgecascade import Client
from edgecascade.processes import Daemon, InProcessDaemon
from tests.helpers.bundles import CONFIDENT, UNSURE


def _load(target: str, stop: threading.Event, results: list, errors: list) -> None:
    with Client(target, timeout_s=1.0) as client:
        i = 0
        while not stop.is_set():
            try:
                results.append(client.infer(UNSURE if i % 2 else CONFIDENT, request_id=f"q{i}"))
            except Exception as exc:  # counted, never sampled
                errors.append(exc)
            i += 1


def test_cloud_killed_mid_run_then_revived(tmp_path, bundles):
    cloud = Daemon("cloud", {"model_dirs": [str(bundles["cloud"])]}, tmp_path, name="cloud").start()
    edge_settings = {"bundle_dir": str(bundles["edge"]), "cloud_target": cloud.target,
                     "breaker_failure_threshold": 2, "breaker_cooldown_s": 0.3}
    with Daemon("edge", edge_settings, tmp_path, name="edge") as edge:
        results: list = []
        errors: list = []
        stop = threading.Event()
        threads = [threading.Thread(target=_load, args=(edge.target, stop, results, errors)) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        cloud.kill()                                   # SIGKILL mid-run
        killed_at = len(results)
        time.sleep(1.5)
        down_results = results[killed_at:]
        cloud = Daemon("cloud", {"model_dirs": [str(bundles["cloud"])], "listen": cloud.settings["listen"]},
                       tmp_path, name="cloud2").start()   # back on the same port
        revived_at = len(results)
        time.sleep(2.0)
        stop.set()
        for t in threads:
            t.join()
        cloud.stop()

    assert errors == [], f"calls failed: {errors[:3]}"
    assert results[:killed_at] and any(r.served_by == "cloud" for r in results[:killed_at])
    down_unsure = [r for r in down_results if r.served_by != "edge"]
    assert down_unsure and all(r.served_by == "edge_fallback" for r in down_unsure[5:])
    reasons = {r.fallback_reason for r in down_unsure if r.served_by == "edge_fallback"}
    assert "breaker_open" in reasons                    # the breaker opened: no request waited on the dead cloud
    # every fallback answered well inside its deadline
    assert max(r.edge_ms + r.cloud_ms for r in down_unsure) < 1000.0
    after = results[revived_at:]
    assert any(r.served_by == "cloud" for r in after[len(after) // 2:]), "deferrals did not resume"


def test_no_cloud_configured_means_fallback(tmp_path, bundles):
    with InProcessDaemon("edge", {"bundle_dir": str(bundles["edge"]), "cloud_target": None}, tmp_path) as edge:
        with Client(edge.target) as client:
            result = client.infer(UNSURE)
    assert result.served_by == "edge_fallback" and result.fallback_reason == "no_cloud"
    assert result.label_name == "a"


def test_slow_cloud_answers_by_fallback_within_deadline(tmp_path, bundles):
    # a cloud whose batcher waits 3 s before computing: a 1 s deadline cannot wait for it, so
    # the answer can only come from the edge fallback (the cloud's would arrive after the
    # client's own deadline, which would fail the call instead)
    with InProcessDaemon("cloud", {"model_dirs": [str(bundles["cloud"])], "max_delay_ms": 3000.0, "max_batch_size": 64},
                         tmp_path, name="slowcloud") as cloud:
        with InProcessDaemon("edge", {"bundle_dir": str(bundles["edge"]), "cloud_target": cloud.target}, tmp_path) as edge:
            with Client(edge.target) as client:
                result = client.infer(UNSURE, timeout_s=1.0)
    assert result.served_by == "edge_fallback" and result.fallback_reason == "deadline"
