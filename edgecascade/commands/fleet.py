"""`edgecascade fleet status`: the live edge agents, from Redis or from a router."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from edgecascade.client_options import add_client_security_options, client_security
from shared.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("fleet", help="inspect the fleet of edge agents")
    fleet_sub = parser.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)
    status = fleet_sub.add_parser("status", help="list live agents: model, policy, routes, breaker, pressure")
    source = status.add_mutually_exclusive_group(required=True)
    source.add_argument("--redis-url", help="read the registry from Redis (as the routers' redis_url)")
    source.add_argument("--router", metavar="HOST:PORT", help="ask a router (works without Redis too)")
    status.add_argument("--prefix", default="edgecascade", help="Redis key prefix (routers' redis_prefix)")
    status.add_argument("--timeout-s", type=float, default=5.0, help="give up after this long")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_client_security_options(status)
    status.set_defaults(func=_status)


def _status(args: argparse.Namespace) -> int:
    from cloud_router.fleet import entry_to_dict

    entries = asyncio.run(_entries(args))
    rows = [entry_to_dict(e) for e in entries]
    if args.json:
        print(json.dumps({"agents": rows, "count": len(rows)}, indent=2))
    else:
        print(format_table(rows))
    return 0


async def _entries(args: argparse.Namespace) -> list:
    if args.timeout_s <= 0:
        raise ConfigError(f"--timeout-s must be positive, got {args.timeout_s}")
    if args.redis_url:
        from cloud_router.fleet import RedisFleetRegistry
        from cloud_router.redis_connection import close_quietly, connect
        from cloud_router.redis_keys import RedisKeys

        try:
            keys = RedisKeys(args.prefix)
        except ValueError as exc:
            raise ConfigError(f"--prefix: {exc}") from None
        client = await connect(args.redis_url, startup_wait_s=0)
        try:
            return await asyncio.wait_for(RedisFleetRegistry(client, keys).entries(), args.timeout_s)
        finally:
            await close_quietly(client)
    import grpc

    from edgecascade.router_address import router_call_error
    from protos import edgecascade_pb2 as pb
    from protos import edgecascade_pb2_grpc as pb_grpc
    from shared.tls import open_aio_channel

    security = client_security(args)
    async with open_aio_channel(args.router, security) as channel:
        try:
            reply = await pb_grpc.CloudRouterStub(channel).GetFleet(pb.FleetRequest(), timeout=args.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise router_call_error(exc.code(), exc.details(), args.router, security) from None
    return list(reply.agents)


COLUMNS = ("AGENT", "MODEL", "POLICY", "THRESHOLD", "EDGE", "CLOUD", "FALLBACK", "ABSTAIN", "BREAKER", "PRESSURE", "SEEN")


def format_table(rows: list[dict[str, Any]], now_s: float | None = None) -> str:
    """One line per agent; counts are since the agent started."""
    now_s = time.time() if now_s is None else now_s
    lines = [COLUMNS]
    for row in rows:
        agent = row["agent"]
        routes = {k: int(v) for k, v in agent.get("route_counts", {}).items()}
        fallbacks = agent.get("fallback_counts", {})
        reasons = ",".join(f"{k}:{v}" for k, v in sorted(fallbacks.items()))
        threshold = f"{agent.get('threshold', 0):.3f}"
        if "min_threshold" in agent:
            threshold += f" [{agent['min_threshold']:.3f}..{agent.get('base_threshold', 0):.3f}]"
        lines.append((
            agent["agent_id"],
            f"{agent.get('model_name', '')} v{agent.get('model_version', '')}",
            "-entropy" if agent.get("policy_signal") == "entropy" else agent.get("policy_signal", ""),
            threshold,
            str(routes.get("edge", 0)),
            str(routes.get("cloud", 0)),
            f"{routes.get('edge_fallback', 0)}" + (f" ({reasons})" if reasons else ""),
            str(routes.get("abstain", 0)),
            agent.get("breaker_state", ""),
            f"{agent.get('cloud_pressure', 0):.2f}",
            f"{max(0.0, now_s - row.get('last_seen_unix_s', now_s)):.1f}s ago",
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    if len(lines) == 1:
        out.append("(no live agents)")
    return "\n".join(out)
