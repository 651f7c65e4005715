"""`edgecascade bench cascade|delta|scale|serve|soak|llm`: the benchmarks behind every performance claim.

Each writes JSON to benchmarks/results/ (or --out) and compares against a baseline measured
in the same run; a --quick run (a smoke test) writes <name>_quick.json there instead, so it
never overwrites the committed result of a full run. The benchmarks themselves live in the
repository's top-level `benchmarks/` package, not in the installed one: this command runs them
from a checkout.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Optional

from edgecascade.output_paths import prepare_output_dir
from shared.errors import ConfigError

RESULTS_DIR = Path("benchmarks/results")
QUICK_SUFFIX = "_quick"


def result_path(bench: str, *, quick: bool, out: Optional[Path]) -> Path:
    """The JSON file a `bench <bench>` run writes: --out when given, else
    benchmarks/results/<bench>.json, or <bench>_quick.json for a --quick run, so that a smoke
    test never overwrites the committed full result."""
    if out is not None:
        return out
    return RESULTS_DIR / f"{bench}{QUICK_SUFFIX if quick else ''}.json"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("bench", help="run a benchmark and write its JSON to benchmarks/results/")
    bench_sub = parser.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)

    cascade = _bench_parser(
        bench_sub, "cascade", _cascade, stem="cascade_<name>", png=True, out_is_dir=True,
        help="text cascade on an intent data set (BANKING77 by default): accuracy, deferral curve, "
        "calibration guarantee, out-of-scope queries",
        description="Writes cascade_<name>.json and .png, <name> being --name or the data folder's name. "
        "BANKING77's targets are checked only on BANKING77. A test set with an out-of-scope label adds "
        "in-scope accuracy, out-of-scope recall and cloud share on mixed traffic for edge, cloud and cascade.",
        quick="trains a fresh pair on at most 12 intents (25 texts each, 4,096 hash buckets), calibrates at "
        "epsilon 0.05, checks no targets; a minute or two")
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
    cascade.add_argument("--no-progress", action="store_true", help="no progress bars")

    delta = _bench_parser(
        bench_sub, "delta", _delta, help="delta updates: patch size, diff/apply time and memory, swap under load",
        quick="smaller pairs (a 256x256 INT8 MLP, the first ~8 MB of MiniLM's tensors, a 784-512-512 float MLP) "
        "and 3 hot swaps per run instead of 20")
    delta.add_argument("--swap-runs", type=_positive_int, default=3, metavar="N",
                       help="run the hot-swap part N times (about a minute each) and report the median run (default 3)")

    _bench_parser(bench_sub, "scale", _scale, help="Redis scheduling: throughput and latency for 1, 2 and 4 workers",
                  quick="2 s per worker count instead of 6 s, 2 low-load rounds of 100 requests instead of 10 of 150")

    _bench_parser(bench_sub, "serve", _serve, help="serving overhead against the bare model and a raw gRPC echo",
                  quick="the digits demo pair instead of BANKING77/MiniLM, one repetition of 0.5 s windows and 50 "
                  "queries instead of 5 of 4 s and 1,000; the targets are still computed but mean nothing on that pair")

    soak = _bench_parser(bench_sub, "soak", _soak, help="soak and chaos: many SDK clients against agent + routers + "
                         "Redis; lost requests, errors, p99, memory growth per daemon")
    soak.add_argument("--duration", type=float, default=300.0, metavar="S", help="seconds of steady load (default 300)")
    soak.add_argument("--clients", type=_positive_int, default=32, help="concurrent SDK clients (default 32)")
    soak.add_argument("--deadline-ms", type=float, default=1000.0, help="each request's deadline (default 1000)")
    soak.add_argument("--no-chaos", action="store_true", help="skip the chaos steps after the steady part")
    soak.add_argument("--step-s", type=float, default=10.0, help="seconds of load per chaos step (default 10)")

    llm = _bench_parser(bench_sub, "llm", _llm, png=True, port_range=False,
                        help="language models: edge ONNX vs transformers, cloud batching, continuous batching's "
                             "time to first token, deferral rate")
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
                     help="concurrent cloud requests, and the batch size when batching is on; for the late-arrival "
                          "time to first token, half of them start a batch and the rest arrive while it runs (default 8)")


def _bench_parser(bench_sub: argparse._SubParsersAction, name: str, run: Callable[[argparse.Namespace], int], *,
                  help: str, description: Optional[str] = None, quick: Optional[str] = None, png: bool = False,
                  stem: Optional[str] = None, out_is_dir: bool = False, port_range: bool = True) -> argparse.ArgumentParser:
    """The `bench <name>` parser with the options every benchmark has: --quick when it has a
    smoke test (`quick` says what that leaves out), --out, and --port-range unless it starts
    no daemons. It writes <stem>.json (and .png with `png`), <stem>_quick.json with --quick;
    `out_is_dir`: --out names the directory those go in, not the JSON file. `_prepare` reads
    what this records."""
    parser = bench_sub.add_parser(name, help=help, description=description)
    stem = stem or name
    also_png = " and .png" if png else ""
    if quick is not None:
        where = " in --out" if out_is_dir else " unless --out is given"
        parser.add_argument("--quick", action="store_true",
                            help=f"smoke test: {quick}. Writes {stem}{QUICK_SUFFIX}.json{also_png}{where}")
    if out_is_dir:
        parser.add_argument("--out", type=Path, default=RESULTS_DIR, metavar="DIR",
                            help=f"output directory for {stem}.json{also_png} (default: {RESULTS_DIR})")
    else:
        quick_default = f", {stem}{QUICK_SUFFIX}.json with --quick" if quick is not None else ""
        parser.add_argument("--out", type=Path, default=None, metavar="FILE",
                            help=f"output JSON file{', the PNG next to it' if png else ''} "
                            f"(default: {RESULTS_DIR}/{stem}.json{quick_default})")
    if port_range:
        parser.add_argument("--port-range", metavar="LO-HI", default=None,
                            help="loopback ports the daemons may listen on, e.g. 20000-20100 (default: any free port; "
                            "also $EDGECASCADE_PORT_RANGE)")
    parser.set_defaults(func=run, bench=name, out_is_dir=out_is_dir)
    return parser


def _prepare(args: argparse.Namespace) -> tuple[ModuleType, Path]:
    """What every benchmark does first: apply --port-range, load `benchmarks.<name>` from the
    checkout and check that the output directory can be written. Returns the module and the
    JSON file to write (for cascade: the output directory)."""
    if getattr(args, "port_range", None) is not None:
        from edgecascade.processes import set_port_range

        set_port_range(args.port_range)
    module = _benchmark(args.bench)
    if args.out_is_dir:
        return module, prepare_output_dir(args.out, "--out")
    out = result_path(args.bench, quick=getattr(args, "quick", False), out=args.out)
    prepare_output_dir(out.parent, "--out")
    return module, out


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
    module, out_dir = _prepare(args)
    result = module.run_cascade_bench(
        args.data_dir, out_dir, e2e=args.e2e, quick=args.quick, name=args.name, models_dir=args.models,
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
    module, out = _prepare(args)
    result = module.run_delta_bench(out, quick=args.quick, swap_runs=args.swap_runs)
    lines = [f"{pair['name']}: full {pair['full_bytes']} B; per-tensor patch "
             f"{pair['methods']['tensor']['patch_bytes'] / pair['full_bytes']:.1%}, bsdiff4 "
             f"{pair['methods']['bsdiff4']['patch_bytes'] / pair['full_bytes']:.1%}"
             for pair in result.get("pairs", []) if "methods" in pair]
    print("\n".join(lines + [summary(result.get("swap", {}), DELTA_SWAP_FIELDS)]))
    print(f"full results: {out}")
    return 0


def _scale(args: argparse.Namespace) -> int:
    module, out = _prepare(args)
    print(summary(module.run_scale_bench(out, quick=args.quick), SCALE_FIELDS))
    print(f"full results: {out}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    module, out = _prepare(args)
    print(summary(module.run_serve_bench(out, quick=args.quick), SERVE_FIELDS))
    print(f"full results: {out}")
    return 0


def _llm(args: argparse.Namespace) -> int:
    from edgecascade.commands.export_llm import read_prompts

    kwargs = {"prompts": read_prompts(args.prompts, "--prompts")} if args.prompts else {}
    module, out = _prepare(args)
    result = module.run_llm_bench(args.edge, args.cloud, out, edge_onnx=args.edge_onnx,
                                  max_new_tokens=args.max_new_tokens, threshold=args.threshold,
                                  cloud_concurrency=args.cloud_concurrency, precision=args.precision, **kwargs)
    print(summary(result, LLM_FIELDS))
    print(f"full results: {out} (plot: {out.with_suffix('.png')})")
    return 0


def _soak(args: argparse.Namespace) -> int:
    module, out = _prepare(args)
    result = module.run_soak(out, duration_s=args.duration, clients=args.clients, deadline_ms=args.deadline_ms,
                             chaos=not args.no_chaos, step_s=args.step_s, progress=print)
    steady = result["steady"]
    print(f"steady {steady['duration_s']:.0f} s: {result['requests']} requests, {result['lost']} lost, "
          f"{result['errors']} errors, p99 {result['p99_ms']} ms; rss growth {result['rss_growth']}")
    for step in result["chaos"]:
        print(f"  {step['step']}: {step['requests']} requests, {step['lost']} lost, {step['errors']} errors, "
              f"{step['late']} late, routes {step['routes']}")
    print(f"wrote {out}")
    return 0 if result["lost_total"] == 0 and result["duplicate_answers"] == 0 else 1


CASCADE_FIELDS = ("edge_only_accuracy", "cloud_only_accuracy", "oracle_accuracy", "deferral_to_match_cloud", "apgr",
                  "guarantee_violation_rate", "edge_model_bytes", "cloud_model_bytes", "targets")
DELTA_SWAP_FIELDS = ("swaps", "failed_requests", "p50_steady_ms", "p50_swap_ms", "p99_steady_ms", "p99_swap_ms", "checks")
SCALE_FIELDS = ("workers", "throughput_rps", "p50_ms", "p99_ms", "scaling_efficiency", "redis_overhead_p50_ms", "targets")
LLM_FIELDS = ("edge_onnx_vs_transformers_decode_ratio", "edge_onnx_vs_transformers_ttft_ratio", "cloud_batching_gain",
              "cloud_continuous_ttft_gain")
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
