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

    cascade = bench_sub.add_parser(
        "cascade", help="text cascade on an intent data set (BANKING77 by default): accuracy, deferral curve, "
        "calibration guarantee, out-of-scope queries",
        description="Writes cascade_<name>.json and .png, <name> being --name or the data folder's name. "
        "BANKING77's targets are checked only on BANKING77. A test set with an out-of-scope label adds "
        "in-scope accuracy, out-of-scope recall and cloud share on mixed traffic for edge, cloud and cascade.")
    cascade.add_argument("--data-dir", type=Path, default=None,
                         help="directory with train.csv and test.csv (default: $EDGECASCADE_DATA_DIR or ../shared/data/banking77)")
    cascade.add_argument("--name", default=None, help="the data set's name in the result file and plot (default: the folder's name)")
    cascade.add_argument("--models", type=Path, default=None, metavar="DIR",
                         help="measure the pair `edgecascade train --out DIR` built instead of building one "
                         "(test data from --data-dir)")
    cascade.add_argument("--oos-label", default=None, metavar="LABEL",
                         help="label of out-of-scope test queries (default: out_of_scope or oos when present)")
    cascade.add_argument("--abstain-cost", type=float, default=0.01, metavar="C",
                         help="in-scope accuracy the abstain thresholds may cost on the calibration half (default 0.01)")
    cascade.add_argument("--epsilon", type=float, default=None,
                         help="accuracy drop vs cloud the calibrated threshold may cost (Learn then Test, delta 0.05; "
                         "default 0.01, 0.05 with --quick); small data sets cannot certify 0.01")
    cascade.add_argument("--e2e", action="store_true", help="also send the test set through SDK -> edge agent -> cloud router")
    cascade.add_argument("--quick", action="store_true",
                         help="smoke test: trains a fresh pair on at most 12 intents (25 texts each, 4,096 hash "
                         "buckets), calibrates at epsilon 0.05, checks no targets; a minute or two. Writes "
                         "cascade_<name>_quick.json and .png")
    cascade.add_argument("--out", type=Path, default=RESULTS_DIR,
                         help="output directory for cascade_<name>.json and .png (default: benchmarks/results)")
    cascade.add_argument("--no-progress", action="store_true", help="no progress bars")
    _port_range_option(cascade)
    cascade.set_defaults(func=_cascade)

    delta = bench_sub.add_parser("delta", help="delta updates: patch size, diff/apply time and memory, swap under load")
    delta.add_argument("--quick", action="store_true",
                       help="smoke test: smaller pairs (a 256x256 INT8 MLP, the first ~8 MB of MiniLM's tensors, a "
                       "784-512-512 float MLP) and 3 hot swaps per run instead of 20; writes to --out like a full run")
    delta.add_argument("--swap-runs", type=_positive_int, default=3, metavar="N",
                       help="run the hot-swap part N times (about a minute each) and report the median run (default 3)")
    delta.add_argument("--out", type=Path, default=RESULTS_DIR / "delta.json",
                       help="output JSON file (default: benchmarks/results/delta.json)")
    _port_range_option(delta)
    delta.set_defaults(func=_delta)

    scale = bench_sub.add_parser("scale", help="Redis scheduling: throughput and latency for 1, 2 and 4 workers")
    scale.add_argument("--quick", action="store_true",
                       help="smoke test: 2 s per worker count instead of 6 s, 2 low-load rounds of 100 requests instead "
                       "of 10 of 150; writes to --out like a full run")
    scale.add_argument("--out", type=Path, default=RESULTS_DIR / "scale.json",
                       help="output JSON file (default: benchmarks/results/scale.json)")
    _port_range_option(scale)
    scale.set_defaults(func=_scale)

    serve = bench_sub.add_parser("serve", help="serving overhead against the bare model and a raw gRPC echo")
    serve.add_argument("--quick", action="store_true",
                       help="smoke test: the digits demo pair instead of BANKING77/MiniLM, one repetition of 0.5 s "
                       "windows and 50 queries instead of 5 of 4 s and 1,000; the targets are still computed but mean "
                       "nothing on that pair. Writes to --out like a full run")
    serve.add_argument("--out", type=Path, default=RESULTS_DIR / "serve.json",
                       help="output JSON file (default: benchmarks/results/serve.json)")
    _port_range_option(serve)
    serve.set_defaults(func=_serve)

    soak = bench_sub.add_parser("soak", help="soak and chaos: many SDK clients against agent + routers + Redis; "
                                             "lost requests, errors, p99, memory growth per daemon")
    soak.add_argument("--duration", type=float, default=300.0, metavar="S", help="seconds of steady load (default 300)")
    soak.add_argument("--clients", type=_positive_int, default=32, help="concurrent SDK clients (default 32)")
    soak.add_argument("--deadline-ms", type=float, default=1000.0, help="each request's deadline (default 1000)")
    soak.add_argument("--no-chaos", action="store_true", help="skip the chaos steps after the steady part")
    soak.add_argument("--step-s", type=float, default=10.0, help="seconds of load per chaos step (default 10)")
    soak.add_argument("--out", type=Path, default=RESULTS_DIR / "soak.json", help="output JSON file")
    _port_range_option(soak)
    soak.set_defaults(func=_soak)


def _port_range_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port-range", metavar="LO-HI", default=None,
                        help="loopback ports the daemons may listen on, e.g. 20000-20100 (default: any free port; "
                        "also $EDGECASCADE_PORT_RANGE)")


def _apply_port_range(args: argparse.Namespace) -> None:
    if getattr(args, "port_range", None) is not None:
        from edgecascade.processes import set_port_range

        set_port_range(args.port_range)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _cascade(args: argparse.Namespace) -> int:
    from shared.errors import InvalidInputError

    if not 0 <= args.abstain_cost < 1:
        raise InvalidInputError(f"--abstain-cost must be in [0, 1), got {args.abstain_cost}")
    if args.epsilon is not None and not 0 < args.epsilon < 1:
        raise InvalidInputError(f"--epsilon must be in (0, 1), got {args.epsilon}")
    _apply_port_range(args)
    module = _benchmark("cascade")
    prepare_output_dir(args.out, "--out")
    result = module.run_cascade_bench(
        args.data_dir, args.out, e2e=args.e2e, quick=args.quick, name=args.name, models_dir=args.models,
        oos_label=args.oos_label, abstain_cost=args.abstain_cost, epsilon=args.epsilon, progress=not args.no_progress)
    print(summary(result, CASCADE_FIELDS))
    if "targets_note" in result:
        print(result["targets_note"])
    mixed = result.get("out_of_scope")
    if mixed:
        for system in ("edge_only", "cloud_only", "cascade", "cascade_abstain"):
            row = mixed[system]
            print(f"{system} (mixed traffic): in-scope accuracy {row['in_scope_accuracy']:.4f}, out-of-scope recall "
                  f"{row['out_of_scope_recall']:.4f}, sent to the cloud {row['deferral_rate']:.4f}")
    print(f"full results: {result['files']['json']} (plot: {result['files']['png']})")
    return 0


def _delta(args: argparse.Namespace) -> int:
    _apply_port_range(args)
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
    _apply_port_range(args)
    module = _benchmark("scale")
    prepare_output_dir(args.out.parent, "--out")
    result = module.run_scale_bench(args.out, quick=args.quick)
    print(summary(result, SCALE_FIELDS))
    print(f"full results: {args.out}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    _apply_port_range(args)
    module = _benchmark("serve")
    prepare_output_dir(args.out.parent, "--out")
    result = module.run_serve_bench(args.out, quick=args.quick)
    print(summary(result, SERVE_FIELDS))
    print(f"full results: {args.out}")
    return 0


def _soak(args: argparse.Namespace) -> int:
    _apply_port_range(args)
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
