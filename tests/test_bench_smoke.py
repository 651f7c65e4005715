"""Smoke runs of the benchmarks (seconds, no targets checked) so the commands cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_bench_serve_quick(tmp_path, demo_cache):
    out = tmp_path / "serve.json"
    proc = subprocess.run([sys.executable, "-m", "edgecascade.cli", "bench", "serve", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "EDGECASCADE_CACHE_DIR": str(demo_cache)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for key in ("raw_model_best_rps", "router_batched_rps", "router_unbatched_rps", "router_p50_ms", "router_p99_ms",
                "raw_edge_p50_ms", "agent_p50_ms", "agent_p99_ms", "echo_rps", "agent_trivial_rps"):
        assert result[key] > 0, key
    assert result["router_batched_errors"] == result["router_unbatched_errors"] == result["agent_trivial_errors"] == 0
