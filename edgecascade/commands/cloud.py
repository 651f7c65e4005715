"""`edgecascade cloud run --config cloud.yaml`: the cloud router daemon."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("cloud", help="run the cloud router daemon")
    cloud_sub = parser.add_subparsers(dest="cloud_command", metavar="ACTION", required=True)
    run = cloud_sub.add_parser("run", help="serve the CloudRouter gRPC API until SIGTERM")
    run.add_argument("--config", help="YAML settings file (see cloud_router/settings.py); env EDGECASCADE_ROUTER_* also works")
    run.add_argument("--listen", help="host:port to serve on (overrides the config)")
    run.add_argument("--model-dir", action="append", dest="model_dirs", help="model bundle to host (repeatable; overrides the config)")
    run.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from cloud_router.daemon import run
    from cloud_router.settings import RouterSettings
    from shared.settings import load_settings

    settings = load_settings(RouterSettings, args.config, listen=args.listen, model_dirs=args.model_dirs)
    run(settings)
    return 0
