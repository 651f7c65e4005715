"""`edgecascade edge run --config edge.yaml`: the edge agent daemon."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Serve the edge agent: the EdgeAgent gRPC API (what the SDK calls), KServe v2, health and
reflection on one port, until SIGTERM (then drain and exit 0). Each request runs the edge model;
what the policy defers goes to the cloud router, and if the cloud fails the edge answers itself.

Settings come from, highest first: these flags, the YAML file (--config), EDGECASCADE_EDGE_<NAME>
environment variables, the defaults. Every setting and its default is documented in
edge_agent/settings.py; deploy/systemd/edge.yaml.example is a commented example file.
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("edge", help="run the edge agent daemon")
    edge_sub = parser.add_subparsers(dest="edge_command", metavar="ACTION", required=True)
    run = edge_sub.add_parser("run", help="serve the EdgeAgent gRPC API until SIGTERM", description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--config", metavar="YAML", help="YAML settings file (default: none, only the environment and defaults)")
    run.add_argument("--listen", metavar="HOST:PORT",
                     help="host:port to serve on (default: the config's listen, else 127.0.0.1:50061)")
    run.add_argument("--bundle-dir", metavar="DIR",
                     help="edge classifier bundle directory (default: the config's bundle_dir; required "
                          "unless llm_dir is set, for an agent that serves only a language model)")
    run.add_argument("--cloud-target", metavar="HOST:PORT",
                     help="host:port of the cloud router (default: the config's cloud_target, else 127.0.0.1:50051)")
    run.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from edge_agent.daemon import run
    from edge_agent.settings import EdgeSettings
    from shared.listen import check_can_listen
    from shared.settings import load_settings

    settings = load_settings(EdgeSettings, args.config, listen=args.listen, bundle_dir=args.bundle_dir,
                             cloud_target=args.cloud_target)
    check_can_listen(settings.listen)  # before the model loads
    run(settings)
    return 0
