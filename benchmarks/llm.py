"""`edgecascade bench llm --edge DIR --cloud DIR`: the language-model cascade, measured.

- Edge: tokens/s and time to first token of the same checkpoint on ONNX Runtime (the edge
  runtime, after `export-llm`) against transformers (the cloud host, one request at a time).
- Cloud: tokens/s of concurrent requests with batching on against off (the same host, batches
  of one), the same prompts and the same run.
- Cloud, late arrivals: time to first token of requests that arrive while a batch decodes, with
  continuous batching (they join the running batch) against static batching (they wait for it
  to end). Half the concurrency starts together; the others arrive one by one while the first of
  them streams the first half of its tokens.
- Deferral: the share of prompts the edge defers at a threshold (given, or the edge's
  llm_policy.json).

Writes llm.json and llm.png. Numbers are medians over the prompts; the ratios compare
measurements of this run only.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from benchmarks.common import machine_description

DEFAULT_PROMPTS = (
    "The capital of France is",
    "Write a short poem about the sea.",
    "def fibonacci(n):",
    "Edge devices are useful because",
    "Explain what a KV cache is in one sentence.",
    "The three primary colours are",
    "Translate to German: good morning, how are you?",
    "List four planets of the solar system:",
)


async def _timed(stream) -> dict[str, float]:
    """Run one generation stream: time to first token, decode tokens/s, tokens."""
    from shared.llm_request import GenerationResult

    started = time.perf_counter()
    first: Optional[float] = None
    result = None
    async for event in stream:
        if isinstance(event, GenerationResult):
            result = event
        elif first is None and event.token_id is not None:
            first = time.perf_counter()
    ended = time.perf_counter()
    tokens = len(result.token_ids)
    first = ended if first is None else first
    decode_s = ended - first
    return {"ttft_ms": (first - started) * 1000.0, "tokens": tokens,
            "decode_tok_s": (tokens - 1) / decode_s if tokens > 1 and decode_s > 0 else 0.0,
            "total_s": ended - started, "finish_reason": result.finish_reason}


def _summary(runs: list[dict[str, float]]) -> dict[str, float]:
    return {"ttft_ms_median": statistics.median(r["ttft_ms"] for r in runs),
            "decode_tok_s_median": statistics.median(r["decode_tok_s"] for r in runs),
            "tokens_total": int(sum(r["tokens"] for r in runs)), "requests": len(runs)}


async def _edge_onnx(edge_onnx: Path, requests, *, policy=None) -> tuple[list[dict], list[str]]:
    from edge_agent.llm_runtime import OnnxCausalLM

    model = OnnxCausalLM(edge_onnx, max_concurrent=1)
    model.load()
    try:
        await model.generate(requests[0], 600)  # warm-up
        runs = [await _timed(model.stream(r, 600)) for r in requests]
        reasons = []
        if policy is not None:
            reasons = [(await model.generate(r, 600, should_defer=policy.should_defer)).finish_reason for r in requests]
        return runs, reasons
    finally:
        model.close()


async def _host_runs(model_dir: Path, requests, *, max_batch_size: int, concurrent: bool) -> tuple[list[dict], float]:
    from cloud_router.llm_host import CausalLMHost

    host = CausalLMHost(model_dir, max_batch_size=max_batch_size, max_delay_ms=5.0 if max_batch_size > 1 else 0.0)
    await host.load()
    try:
        await host.generate(requests[0], 600)  # warm-up
        started = time.perf_counter()
        if concurrent:
            runs = list(await asyncio.gather(*(_timed(host.stream(r, 600)) for r in requests)))
        else:
            runs = [await _timed(host.stream(r, 600)) for r in requests]
        return runs, time.perf_counter() - started
    finally:
        await host.close()


async def _drain(stream) -> None:
    async for _ in stream:
        pass


async def _late_arrival_runs(model_dir: Path, running, late, *, continuous: bool) -> dict[str, Any]:
    """Start `running` together; send each of `late` after the first running request has streamed
    another `every` tokens; time to first token of the late ones."""
    from cloud_router.llm_host import CausalLMHost
    from shared.llm_request import GenerationResult

    host = CausalLMHost(model_dir, max_batch_size=len(running) + len(late), max_delay_ms=5.0,
                        continuous_batching=continuous)
    await host.load()
    try:
        await host.generate(late[0], 600)  # warm-up
        joined_before = host.stats.joined
        lead = host.stream(running[0], 600)
        others = [asyncio.ensure_future(_drain(host.stream(r, 600))) for r in running[1:]]
        every = max(1, running[0].max_new_tokens // (2 * len(late)))
        arrivals: list[asyncio.Future] = []
        during = seen = 0
        async for event in lead:
            if isinstance(event, GenerationResult):
                break
            seen += event.token_id is not None
            if len(arrivals) < len(late) and seen == 1 + len(arrivals) * every:
                arrivals.append(asyncio.ensure_future(_timed(host.stream(late[len(arrivals)], 600))))
                during += 1
        arrivals += [asyncio.ensure_future(_timed(host.stream(r, 600))) for r in late[len(arrivals):]]
        runs = list(await asyncio.gather(*arrivals))
        await asyncio.gather(*others)
        ttft_ms = [r["ttft_ms"] for r in runs]
        return {"ttft_ms_median": statistics.median(ttft_ms), "ttft_ms": ttft_ms, "arrivals": len(runs),
                "arrived_during_batch": during, "arrival_every_tokens": every,
                "joined_running_batch": host.stats.joined - joined_before,
                "continuous_batching_on": host.joins_running_batch}
    finally:
        await host.close()


def run_llm_bench(edge_dir: Path, cloud_dir: Path, out: Path, *, edge_onnx: Optional[Path] = None,
                  prompts: Sequence[str] = DEFAULT_PROMPTS, max_new_tokens: int = 64, threshold: Optional[float] = None,
                  cloud_concurrency: int = 8, precision: str = "fp32") -> dict[str, Any]:
    from edgecascade.offline.llm_export import export_llm
    from shared.llm_policy import LLMPolicy, load_llm_policy
    from shared.llm_request import FINISH_DEFERRED, GenerationRequest

    out = Path(out)
    requests = [GenerationRequest(prompt=p, max_new_tokens=max_new_tokens) for p in prompts]
    with tempfile.TemporaryDirectory(prefix="bench-llm-") as scratch:
        if edge_onnx is None:
            edge_onnx = export_llm(edge_dir, Path(scratch) / "edge-onnx", precision=precision).out_dir
        policy = load_llm_policy(edge_onnx)
        if threshold is not None:
            policy = LLMPolicy(model_name=policy.model_name if policy else "edge", threshold=threshold,
                               signal=policy.signal if policy else "min_top_prob",
                               min_tokens=policy.min_tokens if policy else 4)
        onnx_runs, reasons = asyncio.run(_edge_onnx(edge_onnx, requests, policy=policy))
    torch_runs, _ = asyncio.run(_host_runs(edge_dir, requests, max_batch_size=1, concurrent=False))
    cloud_requests = [requests[i % len(requests)] for i in range(max(cloud_concurrency, 1))]
    batched_runs, batched_s = asyncio.run(_host_runs(cloud_dir, cloud_requests, max_batch_size=cloud_concurrency,
                                                     concurrent=True))
    unbatched_runs, unbatched_s = asyncio.run(_host_runs(cloud_dir, cloud_requests, max_batch_size=1, concurrent=True))
    running = cloud_requests[: max(1, len(cloud_requests) // 2)]
    late_tokens = max(1, max_new_tokens // 4)
    late = [GenerationRequest(prompt=requests[i % len(requests)].prompt, max_new_tokens=late_tokens)
            for i in range(max(1, len(cloud_requests) - len(running)))]
    late_continuous = asyncio.run(_late_arrival_runs(cloud_dir, running, late, continuous=True))
    late_static = asyncio.run(_late_arrival_runs(cloud_dir, running, late, continuous=False))
    edge_onnx_summary, edge_torch_summary = _summary(onnx_runs), _summary(torch_runs)
    batched_tok_s = sum(r["tokens"] for r in batched_runs) / batched_s
    unbatched_tok_s = sum(r["tokens"] for r in unbatched_runs) / unbatched_s
    result: dict[str, Any] = {
        "benchmark": "llm",
        "machine": machine_description(),
        "config": {"edge": str(edge_dir), "cloud": str(cloud_dir), "edge_onnx_precision": precision,
                   "prompts": len(prompts), "max_new_tokens": max_new_tokens, "cloud_concurrency": cloud_concurrency},
        "edge_onnx": edge_onnx_summary,
        "edge_transformers": edge_torch_summary,
        "edge_onnx_vs_transformers_decode_ratio": _ratio(edge_onnx_summary["decode_tok_s_median"],
                                                         edge_torch_summary["decode_tok_s_median"]),
        "edge_onnx_vs_transformers_ttft_ratio": _ratio(edge_onnx_summary["ttft_ms_median"],
                                                       edge_torch_summary["ttft_ms_median"]),
        "cloud_batched": {"tok_s": batched_tok_s, "wall_s": batched_s, **_summary(batched_runs)},
        "cloud_unbatched": {"tok_s": unbatched_tok_s, "wall_s": unbatched_s, **_summary(unbatched_runs)},
        "cloud_batching_gain": _ratio(batched_tok_s, unbatched_tok_s),
        "cloud_late_arrivals": {"running": len(running), "late_max_new_tokens": late_tokens,
                                "continuous": late_continuous, "static": late_static},
        "cloud_continuous_ttft_gain": _ratio(late_static["ttft_ms_median"], late_continuous["ttft_ms_median"]),
        "deferral": None if policy is None else {
            "threshold": policy.threshold, "signal": policy.signal, "min_tokens": policy.min_tokens,
            "rate": sum(r == FINISH_DEFERRED for r in reasons) / len(reasons)},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    import json

    out.write_text(json.dumps(result, indent=2) + "\n")
    plot_llm_bench(result, out.with_suffix(".png"))
    return result


def _ratio(a: float, b: float) -> Optional[float]:
    return a / b if b else None


def plot_llm_bench(result: dict[str, Any], path: Path) -> Path:
    """Three panels: decode tokens/s and time to first token per configuration, and the time to
    first token of requests arriving while a cloud batch decodes (continuous against static)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right, late) = plt.subplots(1, 3, figsize=(14, 4), dpi=110)
    names = ["edge ONNX", "edge transformers", "cloud batched", "cloud unbatched"]
    tok_s = [result["edge_onnx"]["decode_tok_s_median"], result["edge_transformers"]["decode_tok_s_median"],
             result["cloud_batched"]["tok_s"], result["cloud_unbatched"]["tok_s"]]
    left.bar(names, tok_s, color=["tab:green", "tab:olive", "tab:blue", "tab:gray"])
    left.set_ylabel("tokens/s, log scale\n(edge: median per request; cloud: all requests)")
    left.set_title("throughput")
    left.set_yscale("log")
    left.tick_params(axis="x", rotation=20)
    ttft = [result["edge_onnx"]["ttft_ms_median"], result["edge_transformers"]["ttft_ms_median"],
            result["cloud_batched"]["ttft_ms_median"], result["cloud_unbatched"]["ttft_ms_median"]]
    right.bar(names, ttft, color=["tab:green", "tab:olive", "tab:blue", "tab:gray"])
    right.set_ylabel("time to first token, median (ms), log scale")
    right.set_title("time to first token")
    right.set_yscale("log")
    right.tick_params(axis="x", rotation=20)
    arrivals = result["cloud_late_arrivals"]
    late.bar(["continuous", "static"], [arrivals["continuous"]["ttft_ms_median"], arrivals["static"]["ttft_ms_median"]],
             color=["tab:blue", "tab:gray"])
    late.set_ylabel("time to first token, median (ms), log scale")
    late.set_title(f"cloud: {arrivals['continuous']['arrivals']} requests arriving mid-batch")
    late.set_yscale("log")
    fig.suptitle(f"edgecascade bench llm ({result['config']['prompts']} prompts, "
                 f"{result['config']['max_new_tokens']} new tokens)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
