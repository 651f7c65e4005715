"""Smoke runs of the benchmarks (seconds, no targets checked) so the commands cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_bench_serve_quick(tmp_path, demo_cache):
    """Run with no --out in an empty working directory: a quick run writes serve_quick.json
    under benchmarks/results/ there, never the full run's serve.json."""
    repo = Path(__file__).resolve().parents[1]
    pythonpath = os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "edgecascade.cli", "bench", "serve", "--quick"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "EDGECASCADE_CACHE_DIR": str(demo_cache), "PYTHONPATH": pythonpath})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = Path("benchmarks/results/serve_quick.json")
    assert sorted(p.name for p in (tmp_path / out.parent).iterdir()) == [out.name]
    result = json.loads((tmp_path / out).read_text())
    for key in ("raw_model_best_rps", "router_batched_rps", "router_unbatched_rps", "router_p50_ms", "router_p99_ms",
                "raw_edge_p50_ms", "agent_p50_ms", "agent_p99_ms", "echo_rps", "agent_trivial_rps"):
        assert result[key] > 0, key
    assert result["router_batched_errors"] == result["router_unbatched_errors"] == result["agent_trivial_errors"] == 0
    assert isinstance(result["physical_limits"], list) and len(result["targets"]) == 4
    assert result["raw_model_batching_gain"] > 0 and result["router_batching_gain"] > 0
    # a short summary on stdout, not the JSON; it says where the JSON went
    assert len(proc.stdout.splitlines()) < 20 and not proc.stdout.lstrip().startswith("{"), proc.stdout
    assert f"full results: {out}" in proc.stdout and "router_batched_rps:" in proc.stdout


def test_transport_variants_quick(tmp_path):
    """Every echo server kind (aio, uvloop, sync, two processes on one port) and the agent on
    each event loop answer the same bytes; no thresholds."""
    from benchmarks.serve import ECHO_SERVERS, transport_floor, trivial_bundle

    result = transport_floor(trivial_bundle(tmp_path / "trivial"), tmp_path, reps=1, duration_s=0.3, count=20,
                             concurrency=4)
    variants = result["transport_variants"]
    assert set(variants) == set(ECHO_SERVERS) | {"agent_trivial", "agent_trivial_asyncio"}
    assert all(v["rps"] > 0 and v["p50_ms"] > 0 for v in variants.values())
    assert result["agent_trivial_errors"] == 0


def test_bench_outside_a_checkout_says_it_needs_one(tmp_path):
    """The installed package has no benchmarks/: `edgecascade bench` says so, exit code 2."""
    import shutil

    repo = Path(__file__).resolve().parents[1]
    for package in ("edgecascade", "shared", "protos"):
        shutil.copytree(repo / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "edgecascade.cli", "bench", "scale", "--quick", "--out", str(tmp_path / "s.json")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "checkout" in proc.stderr and "benchmarks/" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "s.json").exists()
