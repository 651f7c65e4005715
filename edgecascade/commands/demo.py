"""`edgecascade demo`: router + two edge agents on loopback, the digits test split through the SDK."""

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
        "latency per route. Writes demo.json and deferral_curve.png to --out.",
    )
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="output directory (default: ./demo-out)")
    parser.add_argument("--agents", type=int, default=2, help="edge agents to start (default: 2)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (default: 8)")
    parser.add_argument("--limit", type=int, default=None, help="replay only the first N test inputs")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--port-range", metavar="LO-HI", default=None,
                        help="loopback ports the daemons may listen on, e.g. 20000-20100 (default: any free port; "
                        "also $EDGECASCADE_PORT_RANGE)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from edgecascade.demo import format_table, run_demo
    from edgecascade.processes import set_port_range
    from shared.errors import InvalidInputError

    if args.port_range is not None:
        set_port_range(args.port_range)
    if args.agents < 1 or args.concurrency < 1 or (args.limit is not None and args.limit < 1):
        raise InvalidInputError("--agents, --concurrency and --limit must be positive")
    summary = run_demo(args.out, agents=args.agents, concurrency=args.concurrency, limit=args.limit,
                       progress=not args.no_progress)
    print()
    print(format_table(summary))
    print(f"\nwrote {args.out / 'demo.json'} and {args.out / 'deferral_curve.png'}")
    return 0
