"""The committed `edgecascade bench scale` result has the fields the README and issue name."""

from __future__ import annotations

import json
from pathlib import Path

RESULT = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "scale.json"


def test_scale_result_has_the_promised_fields():
    result = json.loads(RESULT.read_text())
    assert result["workers"] == [1, 2, 4]
    for key in ("throughput_rps", "p50_ms", "p99_ms"):
        assert len(result[key]) == 3 and all(v > 0 for v in result[key]), key
    assert isinstance(result["redis_overhead_p50_ms"], float)
    assert result["quick"] is False
    assert set(result["targets"]) == {"scaling_efficiency_at_4_workers", "redis_overhead_p50_ms"}
