"""The delta benchmark's measuring loop on a tiny pair: every method runs, results are checked."""

from __future__ import annotations

import numpy as np

from benchmarks.delta import METHODS, measure_pair
from tests.helpers.delta import write_safetensors


def test_measure_pair_reports_every_method(tmp_path):
    rng = np.random.default_rng(0)
    body = {f"layer{i}": rng.standard_normal((128, 128)).astype(np.float32) for i in range(4)}
    base = write_safetensors(tmp_path / "a.safetensors", {**body, "head": np.zeros((10, 128), np.float32)})
    target = write_safetensors(tmp_path / "b.safetensors", {**body, "head": np.ones((10, 128), np.float32)})
    result = measure_pair("head_only", base, target, tmp_path, baseline_mb=0.0)
    assert result["full_bytes"] == target.stat().st_size
    assert set(result["methods"]) == set(METHODS)
    for method in METHODS:
        m = result["methods"][method]
        assert m["patch_bytes"] > 0 and m["diff_s"] >= 0 and m["apply_s"] >= 0 and m["peak_mb"] > 0
    assert result["methods"]["tensor"]["format"] == "tensor"
    assert result["checks"]["patch_le_2pct_of_full"]


def test_swap_bench_reports_its_fields():
    from benchmarks.swap import run_swap_bench

    result = run_swap_bench(swaps=1, rate_rps=50.0)
    assert result["swaps"] == 1 and result["failed_requests"] == 0
    assert result["requests_swap"] > 0 and result["requests_steady"] > 0
    assert result["p99_swap_ms"] > 0 and result["p99_steady_ms"] > 0
    assert 0 < result["per_swap_p99_ms_median"] <= result["per_swap_p99_ms_max"]
    assert result["requests_publish_to_takeup"] >= 0 and result["takeup_after_publish_s_median"] > 0
    assert result["p99_publish_to_swap_ms"] > 0
    assert set(result["control_idle_busy_loop"]) == {"p99_ms", "p50_ms", "requests", "p99_ratio_to_steady"}


def test_update_start_times_reads_the_agents_downloading_lines():
    import datetime

    from benchmarks.swap import update_start_times

    log = (
        "2026-11-21 17:00:00,250 INFO edge_agent.updater: update 0123abcd (v2): downloading\n"
        "2026-11-21 17:00:00,300 INFO edge_agent.updater: update 0123abcd (v2): verified\n"
        "2026-11-21 17:00:01,000 WARNING edge_agent.updater: update ffff (v3) rejected (expired): old\n"
        "2026-11-21 17:00:02,125 INFO edge_agent.updater: update 4567ef (v3): downloading\n"
    )
    wall_s = datetime.datetime(2026, 11, 21, 17, 0, 0, 250000).timestamp()
    starts = update_start_times(log, monotonic_minus_wall_s=-wall_s + 10.0)
    assert sorted(starts) == [2, 3]
    assert abs(starts[2] - 10.0) < 1e-6 and abs(starts[3] - 11.875) < 1e-6


def test_swap_report_keeps_the_median_run_and_every_runs_numbers():
    from benchmarks.delta import swap_report

    def run(steady: float, swap: float, failed: int = 0, control: float = 1.2) -> dict:
        return {"failed_requests": failed, "p99_steady_ms": steady, "p99_swap_ms": swap, "per_swap_p99_ms_median": swap,
                "p99_publish_to_swap_ms": swap, "control_idle_busy_loop": {"p99_ratio_to_steady": control}}

    report = swap_report([run(4.0, 8.0), run(4.0, 5.0, failed=1), run(4.0, 6.0)])
    assert report["swap"]["p99_swap_ms"] == 6.0                      # ratios 2.0, 1.25, 1.5: the median is 1.5
    assert [r["p99_ratio"] for r in report["swap_runs"]] == [2.0, 1.25, 1.5]
    assert report["swap_failed_requests_all_runs"] == 1               # a failure in any run is on record
    assert report["physical_limits"] == []                            # the control stayed under 1.5x
    limited = swap_report([run(4.0, 8.0, control=2.5), run(4.0, 7.0, control=1.9), run(4.0, 6.0, control=1.4)])
    assert len(limited["physical_limits"]) == 1 and "1.9x steady" in limited["physical_limits"][0]


def test_bench_delta_refuses_a_swap_run_count_below_one(capsys):
    import pytest

    from edgecascade.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["bench", "delta", "--swap-runs", "0"])
    assert exc.value.code == 2 and "must be at least 1" in capsys.readouterr().err
