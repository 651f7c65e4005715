"""`edgecascade edge run --config edge.yaml`: the edge agent daemon."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("edge", help="run the edge agent daemon")
    edge_sub = parser.add_subparsers(dest="edge_command", metavar="ACTION", required=True)
    run = edge_sub.add_parser("run", help="serve the EdgeAgent gRPC API until SIGTERM")
    run.add_argument("--config", help="YAML settings file (see edge_agent/settings.py); env EDGECASCADE_EDGE_* also works")
    run.add_argument("--listen", help="host:port to serve on (overrides the config)")
    run.add_argument("--bundle-dir", help="edge model bundle directory (overrides the config)")
    run.add_argument("--cloud-target", help="host:port of the cloud router (overrides the config)")
    run.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from edge_agent.daemon import run
    from edge_agent.settings import EdgeSettings
    from shared.settings import load_settings

    settings = load_settings(EdgeSettings, args.config, listen=args.listen, bundle_dir=args.bundle_dir,
                             cloud_target=args.cloud_target)
    run(settings)
    return 0
