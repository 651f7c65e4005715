"""`edgecascade cloud run --config cloud.yaml`: the cloud router daemon."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Serve the cloud router: the CloudRouter gRPC API, KServe v2, health and reflection on one port,
with a dynamic batcher in front of each hosted model, until SIGTERM (then drain and exit 0).

Settings come from, highest first: these flags, the YAML file (--config), EDGECASCADE_ROUTER_<NAME>
environment variables, the defaults. Every setting and its default is documented in
cloud_router/settings.py; deploy/cloud.yaml.example is a commented example file.
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("cloud", help="run the cloud router daemon")
    cloud_sub = parser.add_subparsers(dest="cloud_command", metavar="ACTION", required=True)
    run = cloud_sub.add_parser("run", help="serve the CloudRouter gRPC API until SIGTERM", description=DESCRIPTION,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--config", metavar="YAML", help="YAML settings file (default: none, only the environment and defaults)")
    run.add_argument("--listen", metavar="HOST:PORT",
                     help="host:port to serve on (default: the config's listen, else 127.0.0.1:50051)")
    run.add_argument("--model-dir", action="append", dest="model_dirs", metavar="BUNDLE_DIR",
                     help="classifier bundle to host; repeat for several, the first is the default model "
                     "(default: the config's model_dirs; none needed when llm_dirs or llm_remote_url is set)")
    run.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from cloud_router.daemon import check_hosts_a_model, run
    from cloud_router.settings import RouterSettings
    from shared.listen import check_can_listen
    from shared.settings import load_settings

    settings = load_settings(RouterSettings, args.config, listen=args.listen, model_dirs=args.model_dirs)
    check_hosts_a_model(settings)
    check_can_listen(settings.listen)  # before the models load, which may take a while
    run(settings)
    return 0
