"""`edgecascade demo`: router + two edge agents on loopback, the digits test split through the SDK.
`--serve` keeps a router and an agent up on the demo pair (for the README's examples);
`--make-v2 DIR` writes a second version of the demo edge model (for `update push`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "demo",
        help="run the cascade end to end on this machine (no Redis, no downloads)",
        description="Builds the demo model pair on first use (scikit-learn's bundled digits; cached under "
        "~/.cache/edgecascade or $EDGECASCADE_CACHE_DIR), starts a cloud router and two edge agents on "
        "loopback ports, replays the test split through the SDK, and prints accuracy, route shares and "
        "latency per route. Writes demo.json and deferral_curve.png to --out. With --serve it instead keeps "
        "a router and one agent up on the demo pair until Ctrl-C; with --make-v2 it writes a second version "
        "of the demo edge model for `edgecascade update push`.",
    )
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="output directory (default: ./demo-out)")
    parser.add_argument("--agents", type=int, default=2, help="edge agents to start (default: 2)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (default: 8)")
    parser.add_argument("--limit", type=int, default=None, help="replay only the first N test inputs (default: all 450)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--port-range", metavar="LO-HI", default=None,
                        help="loopback ports the daemons may listen on, e.g. 20000-20100 (default: any free port; "
                        "also $EDGECASCADE_PORT_RANGE)")
    serve = parser.add_argument_group("serving the demo pair")
    serve.add_argument("--serve", action="store_true",
                       help="start a cloud router and an edge agent on the demo pair and keep them up until Ctrl-C "
                       "(configs and logs in OUT/serve); the README's SDK and KServe examples run against them")
    serve.add_argument("--router-listen", default="127.0.0.1:50051", metavar="HOST:PORT",
                       help="with --serve: the router's address (default: 127.0.0.1:50051)")
    serve.add_argument("--agent-listen", default="127.0.0.1:50061", metavar="HOST:PORT",
                       help="with --serve: the agent's address (default: 127.0.0.1:50061)")
    serve.add_argument("--update-key", type=Path, default=None, metavar="PUBLIC_PEM",
                       help="with --serve: the agent takes signed updates verified with this key (from `edgecascade "
                       "update keygen`), so `update push` can be tried (default: updates off)")
    serve.add_argument("--make-v2", type=Path, default=None, metavar="DIR",
                       help="write a version 2 of the demo edge model to DIR (same architecture, biases nudged) "
                       "and print the `update push` command for it; starts nothing")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from edgecascade.demo import format_table, run_demo
    from edgecascade.processes import set_port_range
    from shared.errors import InvalidInputError

    if args.port_range is not None:
        set_port_range(args.port_range)
    if args.agents < 1 or args.concurrency < 1 or (args.limit is not None and args.limit < 1):
        raise InvalidInputError("--agents, --concurrency and --limit must be positive")
    if args.serve and args.make_v2 is not None:
        raise InvalidInputError("--serve and --make-v2 are separate steps; run one, then the other")
    if args.update_key is not None and not args.serve:
        raise InvalidInputError("--update-key only applies with --serve")
    if args.make_v2 is not None:
        return _make_v2(args)
    if args.serve:
        return _serve(args)
    summary = run_demo(args.out, agents=args.agents, concurrency=args.concurrency, limit=args.limit,
                       progress=not args.no_progress)
    print()
    print(format_table(summary))
    print(f"\nwrote {args.out / 'demo.json'} and {args.out / 'deferral_curve.png'}")
    print(next_steps())
    return 0


def next_steps() -> str:
    from edgecascade.offline.demo_models import demo_dir

    root = demo_dir()
    return (f"\nthe demo's model bundles: {root / 'edge'} (edge) and {root / 'cloud'} (cloud)\n"
            "keep a router and an agent up on them for the README's SDK and KServe examples:\n"
            "  edgecascade demo --serve\n"
            "make a version 2 of the edge model to try `edgecascade update push`:\n"
            "  edgecascade demo --make-v2 demo-v2")


def _make_v2(args: argparse.Namespace) -> int:
    from edgecascade.offline.demo_models import ensure_demo_models
    from edgecascade.offline.demo_v2 import make_next_version

    pair = ensure_demo_models()
    out = make_next_version(pair.edge_dir, args.make_v2)
    print(f"wrote {out}: the demo edge model as version 2 (biases nudged)")
    print("publish it to agents started with `edgecascade demo --serve --update-key update_key.pub.pem`:")
    print(f"  edgecascade update push --model {out} --base {pair.edge_dir} --key update_key.pem "
          f"--router 127.0.0.1:50051 --wait")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from edgecascade.demo import serve_demo
    from edgecascade.output_paths import prepare_output_dir

    if args.update_key is not None and not args.update_key.is_file():
        from shared.errors import ConfigError

        raise ConfigError(f"--update-key: {args.update_key} not found (write one with `edgecascade update keygen`)")
    work = prepare_output_dir(args.out / "serve", "--out")

    def ready(pair, cloud, edge) -> None:
        print(f"cloud router on {cloud.target} serving {pair.cloud_dir} (log: {cloud.log_path})")
        print(f"edge agent   on {edge.target} serving {pair.edge_dir} (log: {edge.log_path})")
        if args.update_key is not None:
            print(f"the agent takes updates signed for {args.update_key}")
        print("the README's SDK and KServe examples run against these now; Ctrl-C stops both", flush=True)

    serve_demo(work, router_listen=args.router_listen, agent_listen=args.agent_listen,
               update_public_key=args.update_key, on_ready=ready)
    print("stopped")
    return 0
