"""`edgecascade bench cascade|delta|scale|serve|soak`: the benchmarks behind every performance claim.

Each writes JSON to benchmarks/results/ (or --out) and compares against a baseline measured
in the same run. The benchmarks themselves live in the repository's top-level `benchmarks/`
package, not in the installed one: this command runs them from a checkout.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from types import ModuleType

from shared.errors import ConfigError

RESULTS_DIR = Path("benchmarks/results")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("bench", help="run a benchmark and write its JSON to benchmarks/results/")
    bench_sub = parser.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)

    cascade = bench_sub.add_parser("cascade", help="BANKING77 text cascade: accuracy, deferral curve, calibration guarantee")
    cascade.add_argument("--data-dir", type=Path, default=None, help="directory with train.csv and test.csv (default: ../shared/data/banking77)")
    cascade.add_argument("--e2e", action="store_true", help="also send the test set through SDK -> edge agent -> cloud router")
    cascade.add_argument("--quick", action="store_true", help="a small subset, for smoke tests")
    cascade.add_argument("--out", type=Path, default=RESULTS_DIR, help="output directory")
    cascade.set_defaults(func=_cascade)

    delta = bench_sub.add_parser("delta", help="delta updates: patch size, diff/apply time and memory, swap under load")
    delta.add_argument("--quick", action="store_true", help="small models, for smoke tests")
    delta.add_argument("--swap-runs", type=_positive_int, default=3, metavar="N",
                       help="run the hot-swap part N times (about a minute each) and report the median run (default 3)")
    delta.add_argument("--out", type=Path, default=RESULTS_DIR / "delta.json", help="output JSON file")
    delta.set_defaults(func=_delta)

    scale = bench_sub.add_parser("scale", help="Redis scheduling: throughput and latency for 1, 2 and 4 workers")
    scale.add_argument("--quick", action="store_true", help="short runs, for smoke tests")
    scale.add_argument("--out", type=Path, default=RESULTS_DIR / "scale.json", help="output JSON file")
    scale.set_defaults(func=_scale)

    serve = bench_sub.add_parser("serve", help="serving overhead against the bare model and a raw gRPC echo")
    serve.add_argument("--quick", action="store_true", help="a few seconds, no targets checked, for smoke tests")
    serve.add_argument("--out", type=Path, default=RESULTS_DIR / "serve.json", help="output JSON file")
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


def _print(result: dict) -> None:
    print(json.dumps(result, indent=2))


def _cascade(args: argparse.Namespace) -> int:
    _print(_benchmark("cascade").run_cascade_bench(args.data_dir, args.out, e2e=args.e2e, quick=args.quick))
    return 0


def _delta(args: argparse.Namespace) -> int:
    _print(_benchmark("delta").run_delta_bench(args.out, quick=args.quick, swap_runs=args.swap_runs))
    return 0


def _scale(args: argparse.Namespace) -> int:
    _print(_benchmark("scale").run_scale_bench(args.out, quick=args.quick))
    return 0


def _serve(args: argparse.Namespace) -> int:
    _print(_benchmark("serve").run_serve_bench(args.out, quick=args.quick))
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
