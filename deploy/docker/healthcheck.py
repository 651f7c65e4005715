"""Container HEALTHCHECK: exit 0 when the daemon's grpc.health.v1 service reports SERVING.

    python healthcheck.py [HOST:PORT] [TIMEOUT_S]      (default 127.0.0.1:50051, 3 s)

Exit 1 (with the reason on stderr) when it reports anything else, does not answer in time or
is not listening. A draining daemon reports NOT_SERVING, so it shows as unhealthy while it
stops. Uses only what every edgecascade install has (grpcio, grpcio-health-checking).
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(target: str, timeout_s: float) -> str:
    """The health status name at `target` ('SERVING' when healthy), or the gRPC error code's."""
    with grpc.insecure_channel(target) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.RpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


def main(argv: list[str]) -> int:
    if len(argv) > 3 or (len(argv) > 1 and argv[1] in ("-h", "--help")):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    target = argv[1] if len(argv) > 1 else "127.0.0.1:50051"
    try:
        timeout_s = float(argv[2]) if len(argv) > 2 else 3.0
    except ValueError:
        print(f"TIMEOUT_S must be a number of seconds, not {argv[2]!r}", file=sys.stderr)
        return 2
    status = check(target, timeout_s)
    if status != "SERVING":
        print(f"{target}: {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
