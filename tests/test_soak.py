"""Soak and chaos through real daemons: SDK clients -> edge agent -> routers on Redis.

The short run (a few seconds of steady load, then each chaos step for two seconds) is part of
the default test run; the long one is `-m slow`. Both check what must hold on any machine:
every request id got exactly one final answer, the answer carried the caller's id, and every
answer was a route or a typed error. Latency, deadlines and memory are recorded in the result
(the long run checks memory growth); `edgecascade bench soak` writes them to soak.json.
"""

from __future__ import annotations

import shutil

import pytest

from benchmarks.soak import run_soak

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
ROUTES = {"edge", "cloud", "edge_fallback"}


def check_nothing_lost(result: dict) -> None:
    assert result["lost_total"] == 0
    assert result["duplicate_answers"] == 0
    for phase in [result["steady"], *result["chaos"]]:
        assert phase["requests"] > 0, phase
        assert phase["lost"] == 0 and phase["answered"] == phase["requests"], phase
        assert phase["mismatched_ids"] == 0, phase
        assert {route.split("/")[0] for route in phase["routes"]} <= ROUTES, phase
        assert set(phase["errors_by_class"]) <= {"DeadlineError", "OverloadedError"}, phase


def test_short_soak_with_chaos_loses_nothing(tmp_path):
    result = run_soak(tmp_path / "soak.json", duration_s=3, clients=8, warmup_s=1, step_s=2)
    check_nothing_lost(result)
    assert [step["step"] for step in result["chaos"]] == [
        "cloud_slow", "cloud_unreachable", "cloud_flapping", "redis_restart", "worker_sigkill", "update_mid_load",
        "recovered"]
    assert result["steady"]["routes"].get("cloud", 0) > 0 and result["steady"]["routes"].get("edge", 0) > 0
    unreachable = result["chaos"][1]["routes"]
    assert any(route.startswith("edge_fallback") for route in unreachable), unreachable  # the edge answered
    assert (tmp_path / "soak.json").exists()


@pytest.mark.slow
def test_long_soak_holds_memory_flat(tmp_path):
    result = run_soak(tmp_path / "soak.json", duration_s=120, clients=32, warmup_s=20, step_s=10)
    check_nothing_lost(result)
    for name, growth in result["rss_growth"].items():
        assert growth is not None and growth < 0.10, (name, result["daemons"][name])
