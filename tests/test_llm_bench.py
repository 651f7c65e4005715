"""`bench llm` smoke run on the tiny checkpoints (no numbers checked, only that every part ran)."""

from __future__ import annotations

import json

from benchmarks.llm import run_llm_bench


def test_bench_llm_runs_every_part(tiny_ernie, tiny_edge, long_cloud, tmp_path):
    out = tmp_path / "llm.json"
    run_llm_bench(tiny_ernie, long_cloud, out, edge_onnx=tiny_edge, prompts=["the cat", "what is", "héllo"],
                  max_new_tokens=6, threshold=0.5, cloud_concurrency=3)
    result = json.loads(out.read_text())
    for part in ("edge_onnx", "edge_transformers", "cloud_batched", "cloud_unbatched"):
        assert result[part]["requests"] >= 3 and result[part]["ttft_ms_median"] > 0, part
    assert result["cloud_batched"]["tok_s"] > 0 and result["cloud_batching_gain"] > 0
    late = result["cloud_late_arrivals"]
    for mode in ("continuous", "static"):
        assert late[mode]["arrivals"] == 2 and late[mode]["ttft_ms_median"] > 0, late
    assert late["continuous"]["continuous_batching_on"] and not late["static"]["continuous_batching_on"]
    assert late["static"]["joined_running_batch"] == 0 and result["cloud_continuous_ttft_gain"] > 0
    assert 0.0 <= result["deferral"]["rate"] <= 1.0 and result["deferral"]["threshold"] == 0.5
    assert (tmp_path / "llm.png").stat().st_size > 0
