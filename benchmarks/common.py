"""What several benchmarks use: where results go, the machine they ran on, request bytes and
medians. (The float MLP graphs the delta and swap benchmarks diff and swap come from
`edgecascade.offline.onnx_mlp`.)"""

from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from shared.proto_convert import infer_request

#: Where `edgecascade bench ...` writes its JSON by default (relative to the working directory).
RESULTS_DIR = Path("benchmarks/results")


def machine_description() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def request_bytes(payload: Any) -> bytes:
    return infer_request(payload if isinstance(payload, str) else np.asarray(payload), timeout_ms=30_000).SerializeToString()


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))
