"""`edgecascade update keygen|push|status|rollback`: signed delta model updates.

    edgecascade update keygen --private update_key.pem --public update_key.pub.pem
    edgecascade update push --model NEW_BUNDLE --base OLD_BUNDLE --key update_key.pem \\
        --router 127.0.0.1:50051 [--canary 10] [--wait]
    edgecascade update status --router 127.0.0.1:50051 [--model NAME]
    edgecascade update rollback --model OLD_BUNDLE --base CURRENT_BUNDLE --key update_key.pem --router ...
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from edgecascade.client_options import add_client_security_options, client_security

DEFAULT_ROUTER = "127.0.0.1:50051"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("update", help="signed delta model updates: keys, publish, rollout status, rollback")
    update_sub = parser.add_subparsers(dest="update_command", metavar="ACTION", required=True)

    keygen = update_sub.add_parser("keygen", help="write a new Ed25519 signing key pair")
    keygen.add_argument("--private", type=Path, default=Path("update_key.pem"), help="private key PEM to write (mode 0600)")
    keygen.add_argument("--public", type=Path, default=Path("update_key.pub.pem"),
                        help="public key PEM to write (agents pin it: update_public_key)")
    keygen.set_defaults(func=_keygen)

    for name, help_text, model_help, base_help in (
        ("push", "publish an update through the cloud router", "the new model bundle", "the bundle agents serve now"),
        ("rollback", "publish a signed rollback to a lower version", "the older bundle to go back to",
         "the bundle agents serve now"),
    ):
        cmd = update_sub.add_parser(name, help=help_text)
        cmd.add_argument("--model", type=Path, required=True, help=model_help)
        cmd.add_argument("--base", type=Path, required=True, help=base_help)
        cmd.add_argument("--key", type=Path, required=True, help="Ed25519 private key PEM (from `update keygen`)")
        cmd.add_argument("--router", default=DEFAULT_ROUTER, help="host:port of the cloud router")
        cmd.add_argument("--canary", type=float, default=0.0, metavar="PCT",
                         help="share of agents (percent, 0 to 100) that update first; the rest follow once they "
                         "report healthy (default 0: all at once)")
        cmd.add_argument("--expires-in-s", type=float, default=7 * 24 * 3600.0, help="agents refuse the update after this")
        cmd.add_argument("--golden", type=int, default=8, help="golden inputs the agents check the new model on (0: none)")
        cmd.add_argument("--wait", action="store_true", help="follow the rollout until every agent reports; exit 0 only when all are healthy")
        cmd.add_argument("--wait-s", type=float, default=600.0, help="how long --wait follows the rollout")
        cmd.add_argument("--no-progress", action="store_true", help="no upload progress bar")
        add_client_security_options(cmd)
        cmd.set_defaults(func=_push, rollback=name == "rollback")

    status = update_sub.add_parser("status", help="rollouts and each agent's update state")
    status.add_argument("--router", default=DEFAULT_ROUTER, help="host:port of the cloud router")
    status.add_argument("--model", default="", help="only this model")
    add_client_security_options(status)
    status.set_defaults(func=_status)


def _keygen(args: argparse.Namespace) -> int:
    from edgecascade.output_paths import check_output_file
    from shared.delta.signing import keygen

    check_output_file(args.private, "--private")
    check_output_file(args.public, "--public")
    private, public = keygen(args.private, args.public)
    print(f"wrote {private} (keep it secret) and {public} (set update_public_key to it on every agent)")
    return 0


def _push(args: argparse.Namespace) -> int:
    from edgecascade.progress import ProgressBar, human_bytes
    from edgecascade.update_client import follow_rollout, publish
    from edgecascade.update_package import package_from_bundles
    from shared.delta.signing import load_private_key
    from shared.errors import InvalidInputError

    # Checked before anything is built or uploaded (the router would refuse it only after the upload).
    if not 0.0 <= args.canary <= 100.0:
        raise InvalidInputError(f"--canary must be from 0 to 100 (percent of agents), got {args.canary:g}")
    if args.wait_s <= 0 or args.expires_in_s <= 0 or args.golden < 0:
        raise InvalidInputError("--wait-s and --expires-in-s must be positive and --golden at least 0")
    security = client_security(args)  # a bad option stops before the package is built
    key = load_private_key(args.key)
    started = time.perf_counter()
    package = package_from_bundles(args.model, args.base, key, rollback=args.rollback, expires_in_s=args.expires_in_s,
                                   golden_count=args.golden)
    manifest = package.manifest
    print(f"built {'rollback' if args.rollback else 'update'} {manifest.model_name} v{manifest.version} "
          f"({manifest.patch_format} patch) in {time.perf_counter() - started:.1f} s")
    bar = None if args.no_progress else ProgressBar("uploading")
    try:
        reply = publish(args.router, package, canary_percent=args.canary, progress=bar, security=security)
    finally:
        if bar is not None:
            bar.close()
    share = reply.payload_bytes / reply.target_bytes if reply.target_bytes else 0.0
    print(f"published update {reply.update_id}: patch {human_bytes(reply.payload_bytes)} "
          f"vs full model {human_bytes(reply.target_bytes)} ({share:.1%})")
    if 0 < args.canary < 100:
        print(f"canary: about {args.canary:g}% of agents first, the rest once they report healthy")
    if not args.wait:
        print(f"follow it with: edgecascade update status --router {args.router} --model {reply.model_name}")
        return 0
    shown: set[tuple] = set()

    def show(status) -> None:
        for rollout in status.rollouts:
            if rollout.update_id == reply.update_id and ("phase", rollout.phase) not in shown:
                shown.add(("phase", rollout.phase))
                print(f"rollout phase: {rollout.phase}")
        for agent in status.agents:
            if agent.update_id == reply.update_id and (agent.agent_id, agent.state) not in shown:
                shown.add((agent.agent_id, agent.state))
                print(f"  {agent.agent_id}: {agent.state}{f' ({agent.reason})' if agent.reason else ''}")

    outcome = follow_rollout(args.router, reply.update_id, reply.model_name, timeout_s=args.wait_s, on_status=show,
                             security=security)
    print(f"rollout {outcome}")
    return 0 if outcome == "done" else 1


def _status(args: argparse.Namespace) -> int:
    from edgecascade.update_client import rollout_status

    status = rollout_status(args.router, args.model, security=client_security(args))
    if not status.rollouts:
        print("no rollouts")
    for r in status.rollouts:
        kind = "rollback to" if r.rollback else "update to"
        canary = f", canary {r.canary_percent:g}%" if 0 < r.canary_percent < 100 else ""
        print(f"{r.model_name}: {kind} v{r.version} (update {r.update_id}, {r.patch_format} patch "
              f"{r.payload_bytes} B of {r.target_bytes} B{canary}): phase {r.phase}")
    if status.agents:
        rows = [("AGENT", "MODEL", "SERVING", "UPDATE", "STATE", "CANARY", "REASON")]
        for a in status.agents:
            rows.append((a.agent_id, a.model_name, f"v{a.active_version}", f"v{a.version} {a.update_id}" if a.update_id else "-",
                         a.state or "-", "yes" if a.canary else "", a.reason or ""))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0
