"""`edgecascade bench cascade|delta|scale|serve|soak`: the benchmarks behind every performance claim.

Each writes JSON to benchmarks/results/ (or --out) and compares against a baseline measured
in the same run. The benchmarks themselves live in the repository's top-level `benchmarks/`
package, not in the installed one: this command runs them from a checkout.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from edgecascade.output_paths import prepare_output_dir
from shared.errors import ConfigError

RESULTS_DIR = Path("benchmarks/results")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("bench", help="run a benchmark and write its JSON to benchmarks/results/")
    bench_sub = parser.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)

    cascade = bench_sub.add_parser("cascade", help="BANKING77 text cascade: accuracy, deferral curve, calibration guarantee")
    cascade.add_argument("--data-dir", type=Path, default=None, help="directory with train.csv and test.csv (default: ../shared/data/banking77)")
    cascade.add_argument("--e2e", action="store_true", help="also send the test set through SDK -> edge agent -> cloud router")
    cascade.add_argument("--quick", action="store_true",
                         help="smoke test: trains a fresh pair on 12 of the 77 intents (25 texts each, 4,096 hash "
                         "buckets), calibrates at epsilon 0.05, checks no targets; a minute or two. Writes to --out "
                         "like a full run")
    cascade.add_argument("--out", type=Path, default=RESULTS_DIR,
                         help="output directory for cascade_banking77.json and .png (default: benchmarks/results)")
    cascade.set_defaults(func=_cascade)

    delta = bench_sub.add_parser("delta", help="delta updates: patch size, diff/apply time and memory, swap under load")
    delta.add_argument("--quick", action="store_true",
                       help="smoke test: smaller pairs (a 256x256 INT8 MLP, the first ~8 MB of MiniLM's tensors, a "
                       "784-512-512 float MLP) and 3 hot swaps per run instead of 20; writes to --out like a full run")
    delta.add_argument("--swap-runs", type=_positive_int, default=3, metavar="N",
                       help="run the hot-swap part N times (about a minute each) and report the median run (default 3)")
    delta.add_argument("--out", type=Path, default=RESULTS_DIR / "delta.json",
                       help="output JSON file (default: benchmarks/results/delta.json)")
    delta.set_defaults(func=_delta)

    scale = bench_sub.add_parser("scale", help="Redis scheduling: throughput and latency for 1, 2 and 4 workers")
    scale.add_argument("--quick", action="store_true",
                       help="smoke test: 2 s per worker count instead of 6 s, 2 low-load rounds of 100 requests instead "
                       "of 10 of 150; writes to --out like a full run")
    scale.add_argument("--out", type=Path, default=RESULTS_DIR / "scale.json",
                       help="output JSON file (default: benchmarks/results/scale.json)")
    scale.set_defaults(func=_scale)

    serve = bench_sub.add_parser("serve", help="serving overhead against the bare model and a raw gRPC echo")
    serve.add_argument("--quick", action="store_true",
                       help="smoke test: the digits demo pair instead of BANKING77/MiniLM, one repetition of 0.5 s "
                       "windows and 50 queries instead of 5 of 4 s and 1,000; the targets are still computed but mean "
                       "nothing on that pair. Writes to --out like a full run")
    serve.add_argument("--out", type=Path, default=RESULTS_DIR / "serve.json",
                       help="output JSON file (default: benchmarks/results/serve.json)")
    serve.set_defaults(func=_serve)

    soak = bench_sub.add_parser("soak", help="soak and chaos: many SDK clients against agent + routers + Redis; "
                                             "lost requests, errors, p99, memory growth per daemon")
    soak.add_argument("--duration", type=float, default=300.0, metavar="S", help="seconds of steady load (default 300)")
    soak.add_argument("--clients", type=_positive_int, default=32, help="concurrent SDK clients (default 32)")
    soak.add_argument("--deadline-ms", type=float, default=1000.0, help="each request's deadline (default 1000)")
    soak.add_argument("--no-chaos", action="store_true", help="skip the chaos steps after the steady part")
    soak.add_argument("--step-s", type=float, default=10.0, help="seconds of load per chaos step (default 10)")
    soak.add_argument("--out", type=Path, default=RESULTS_DIR / "soak.json", help="output JSON file")
    soak.set_defaults(func=_soak)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _cascade(args: argparse.Namespace) -> int:
    module = _benchmark("cascade")
    prepare_output_dir(args.out, "--out")
    result = module.run_cascade_bench(args.data_dir, args.out, e2e=args.e2e, quick=args.quick)
    print(summary(result, CASCADE_FIELDS))
    print(f"full results: {args.out / module.RESULT_FILE} (plot: {args.out / module.PLOT_FILE})")
    return 0


def _delta(args: argparse.Namespace) -> int:
    module = _benchmark("delta")
    prepare_output_dir(args.out.parent, "--out")
    result = module.run_delta_bench(args.out, quick=args.quick, swap_runs=args.swap_runs)
    lines = [f"{pair['name']}: full {pair['full_bytes']} B; per-tensor patch "
             f"{pair['methods']['tensor']['patch_bytes'] / pair['full_bytes']:.1%}, bsdiff4 "
             f"{pair['methods']['bsdiff4']['patch_bytes'] / pair['full_bytes']:.1%}"
             for pair in result.get("pairs", []) if "methods" in pair]
    print("\n".join(lines + [summary(result.get("swap", {}), DELTA_SWAP_FIELDS)]))
    print(f"full results: {args.out}")
    return 0


def _scale(args: argparse.Namespace) -> int:
    module = _benchmark("scale")
    prepare_output_dir(args.out.parent, "--out")
    result = module.run_scale_bench(args.out, quick=args.quick)
    print(summary(result, SCALE_FIELDS))
    print(f"full results: {args.out}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    module = _benchmark("serve")
    prepare_output_dir(args.out.parent, "--out")
    result = module.run_serve_bench(args.out, quick=args.quick)
    print(summary(result, SERVE_FIELDS))
    print(f"full results: {args.out}")
    return 0


def _soak(args: argparse.Namespace) -> int:
    result = _benchmark("soak").run_soak(args.out, duration_s=args.duration, clients=args.clients,
                                         deadline_ms=args.deadline_ms, chaos=not args.no_chaos, step_s=args.step_s,
                                         progress=print)
    steady = result["steady"]
    print(f"steady {steady['duration_s']:.0f} s: {result['requests']} requests, {result['lost']} lost, "
          f"{result['errors']} errors, p99 {result['p99_ms']} ms; rss growth {result['rss_growth']}")
    for step in result["chaos"]:
        print(f"  {step['step']}: {step['requests']} requests, {step['lost']} lost, {step['errors']} errors, "
              f"{step['late']} late, routes {step['routes']}")
    print(f"wrote {args.out}")
    return 0 if result["lost_total"] == 0 and result["duplicate_answers"] == 0 else 1


CASCADE_FIELDS = ("edge_only_accuracy", "cloud_only_accuracy", "oracle_accuracy", "deferral_to_match_cloud", "apgr",
                  "guarantee_violation_rate", "edge_model_bytes", "cloud_model_bytes", "targets")
DELTA_SWAP_FIELDS = ("swaps", "failed_requests", "p50_steady_ms", "p50_swap_ms", "p99_steady_ms", "p99_swap_ms", "checks")
SCALE_FIELDS = ("workers", "throughput_rps", "p50_ms", "p99_ms", "scaling_efficiency", "redis_overhead_p50_ms", "targets")
SERVE_FIELDS = ("raw_model_best_rps", "router_batched_rps", "router_unbatched_rps", "router_batching_gain",
                "agent_p50_ms", "agent_p99_ms", "echo_rps", "agent_trivial_rps", "targets")


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(_short(v) for v in value)
    return str(value)


def summary(result: dict, fields: tuple[str, ...]) -> str:
    """A few lines: the named fields that the result holds, targets one per line."""
    lines = []
    for field in fields:
        if field not in result:
            continue
        value = result[field]
        if isinstance(value, dict):  # targets / checks: name -> met (or {"met": ...})
            for name, met in value.items():
                met = met.get("met") if isinstance(met, dict) else met
                lines.append(f"  {'met    ' if met else 'NOT met'}  {name}")
        else:
            lines.append(f"{field}: {_short(value)}")
    return "\n".join(lines)


def _benchmark(name: str) -> ModuleType:
    """`benchmarks.<name>` from the checkout: the working directory's, or the one this package
    was installed from in editable mode. A ConfigError says so when there is none."""
    try:
        return importlib.import_module(f"benchmarks.{name}")
    except ModuleNotFoundError as exc:
        if exc.name not in ("benchmarks", f"benchmarks.{name}"):
            raise
    checkout = Path(__file__).resolve().parents[2]
    if not (checkout / "benchmarks" / "__init__.py").is_file():
        raise ConfigError(
            "the benchmarks are not installed with the package; run `edgecascade bench` in a "
            "checkout of the edgecascade repository (it needs the top-level benchmarks/ directory)"
        )
    sys.path.insert(0, str(checkout))
    return importlib.import_module(f"benchmarks.{name}")
