"""`edgecascade bench cascade|delta|scale|serve|llm`: the benchmarks behind every performance claim.

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

    llm = bench_sub.add_parser("llm", help="language models: edge ONNX vs transformers, cloud batching, deferral rate")
    llm.add_argument("--edge", type=Path, required=True, help="the edge LM's Hugging Face checkpoint directory")
    llm.add_argument("--cloud", type=Path, required=True, help="the cloud LM's Hugging Face checkpoint directory")
    llm.add_argument("--edge-onnx", type=Path, default=None,
                     help="its export-llm directory (default: exported from --edge into a temporary directory)")
    llm.add_argument("--precision", choices=("fp32", "int8", "int4"), default="fp32", help="precision of that export")
    llm.add_argument("--prompts", type=Path, default=None, help="one prompt a line (default: eight built-in)")
    llm.add_argument("--max-new-tokens", type=_positive_int, default=64, help="new tokens per prompt (default 64)")
    llm.add_argument("--threshold", type=float, default=None,
                     help="deferral threshold (default: the edge export's llm_policy.json, if any)")
    llm.add_argument("--cloud-concurrency", type=_positive_int, default=8,
                     help="concurrent cloud requests, and the batch size when batching is on (default 8)")
    llm.add_argument("--out", type=Path, default=RESULTS_DIR / "llm.json", help="output JSON file (the PNG goes next to it)")
    llm.set_defaults(func=_llm)


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


def _llm(args: argparse.Namespace) -> int:
    from edgecascade.commands.export_llm import read_prompts

    kwargs = {"prompts": read_prompts(args.prompts, "--prompts")} if args.prompts else {}
    _print(_benchmark("llm").run_llm_bench(args.edge, args.cloud, args.out, edge_onnx=args.edge_onnx,
                                           max_new_tokens=args.max_new_tokens, threshold=args.threshold,
                                           cloud_concurrency=args.cloud_concurrency, precision=args.precision, **kwargs))
    return 0


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
