"""Container HEALTHCHECK and Kubernetes exec probe: exit 0 when the daemon's grpc.health.v1
service reports SERVING.

    python healthcheck.py [HOST:PORT] [TIMEOUT_S] [--config FILE]
                          [--ca-file F] [--cert-file F --key-file F] [--server-name NAME]

HOST:PORT defaults to 127.0.0.1 and the port of `listen` in --config, else 127.0.0.1:50051;
TIMEOUT_S to 3 s. Exit 1 (with the reason on stderr) when the daemon reports anything else,
does not answer in time or is not listening; exit 2 on bad arguments. A draining daemon
reports NOT_SERVING, so it shows as unhealthy while it stops.

Transport, following the daemon's own settings file (--config, edge.yaml or cloud.yaml; a
setting missing there is taken from EDGECASCADE_ROUTER_<NAME> / EDGECASCADE_EDGE_<NAME>, the
same precedence as the daemon):
- `tls_cert_file` set: TLS. The daemon's certificate is the only one trusted (pinned), and the
  host name checked is the first DNS name of that certificate, so a probe on loopback needs no
  CA. With `tls_client_ca_file` (mutual TLS) the probe presents the daemon's own certificate
  and key as its client certificate: that works when the certificate chains to that CA and
  allows client authentication (`edgecascade certs init|issue` certificates do); otherwise give
  --cert-file/--key-file of a certificate that does. The health service needs no role.
- `plaintext: true`: plaintext.
- neither: the daemon does not start either; exit 1 saying so.
--ca-file, --cert-file/--key-file and --server-name override what the config implies; without
--config, --ca-file or --cert-file selects TLS and nothing selects plaintext.
Uses only what every edgecascade install has (grpcio, grpcio-health-checking, PyYAML,
cryptography).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_TARGET = "127.0.0.1:50051"
ENV_PREFIXES = ("EDGECASCADE_ROUTER_", "EDGECASCADE_EDGE_")
TRANSPORT_SETTINGS = ("listen", "tls_cert_file", "tls_key_file", "tls_client_ca_file", "plaintext")
WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")


class ProbeError(Exception):
    """The probe cannot be set up (exit 1 with this message)."""


@dataclass(frozen=True)
class Transport:
    """How the probe reaches the daemon: plaintext when ca_file is None."""

    ca_file: Optional[Path] = None
    cert_file: Optional[Path] = None
    key_file: Optional[Path] = None
    server_name: Optional[str] = None


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ProbeError(f"{what} {path}: cannot read ({exc.strerror or exc})") from None


def daemon_settings(config: Path) -> dict[str, Any]:
    """The transport settings of the daemon's YAML file, falling back to its environment."""
    import yaml

    try:
        loaded = yaml.safe_load(_read(config, "config file")) or {}
    except yaml.YAMLError as exc:
        raise ProbeError(f"{config}: not valid YAML: {exc}") from None
    if not isinstance(loaded, dict):
        raise ProbeError(f"{config}: expected a mapping of settings at the top level")
    settings = {}
    for name in TRANSPORT_SETTINGS:
        value = loaded.get(name)
        if value is None:
            value = next((os.environ[p + name.upper()] for p in ENV_PREFIXES if p + name.upper() in os.environ), None)
        settings[name] = value
    plaintext = settings["plaintext"]
    settings["plaintext"] = plaintext if isinstance(plaintext, bool) else str(plaintext).lower() in ("1", "true", "yes")
    return settings


def first_dns_name(cert_file: Path) -> Optional[str]:
    """The first DNS subject alternative name of a PEM certificate, else its common name."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        cert = x509.load_pem_x509_certificate(_read(cert_file, "tls_cert_file"))
    except ValueError as exc:
        raise ProbeError(f"tls_cert_file {cert_file}: not a PEM certificate ({exc})") from None
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    if names:
        return names[0]
    common = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(common[0].value) if common else None


def transport_from_settings(settings: dict[str, Any]) -> Transport:
    cert = settings["tls_cert_file"]
    if cert:
        client = (Path(cert), Path(settings["tls_key_file"])) if settings["tls_client_ca_file"] and \
            settings["tls_key_file"] else (None, None)
        return Transport(ca_file=Path(cert), cert_file=client[0], key_file=client[1],
                         server_name=first_dns_name(Path(cert)))
    if settings["plaintext"]:
        return Transport()
    raise ProbeError("the config sets neither tls_cert_file nor plaintext: true, so the daemon does not start")


def target_from_listen(listen: str) -> str:
    host, sep, port = str(listen).rpartition(":")
    if not sep:
        raise ProbeError(f"listen {listen!r} is not host:port")
    return f"{'127.0.0.1' if host in WILDCARD_HOSTS else host}:{port}"


def check(target: str, timeout_s: float, transport: Transport = Transport()) -> str:
    """The health status name at `target` ('SERVING' when healthy), or the gRPC error code's."""
    if transport.ca_file is None and transport.cert_file is None:
        channel = grpc.insecure_channel(target)
    else:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(transport.ca_file, "CA file") if transport.ca_file else None,
            private_key=_read(transport.key_file, "key file") if transport.key_file else None,
            certificate_chain=_read(transport.cert_file, "certificate file") if transport.cert_file else None)
        options = [("grpc.ssl_target_name_override", transport.server_name)] if transport.server_name else []
        channel = grpc.secure_channel(target, credentials, options=options)
    with channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.RpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="healthcheck.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("target", nargs="?", metavar="HOST:PORT", help="default: 127.0.0.1 and the port of listen")
    parser.add_argument("timeout_s", nargs="?", type=float, default=3.0, metavar="TIMEOUT_S",
                        help="seconds to wait for the answer (default 3)")
    parser.add_argument("--config", type=Path, help="the daemon's settings file: its listen port and TLS settings")
    parser.add_argument("--ca-file", type=Path, help="PEM CA (or certificate) to trust for the daemon's certificate")
    parser.add_argument("--cert-file", type=Path, help="PEM client certificate to present (mutual TLS)")
    parser.add_argument("--key-file", type=Path, help="PEM key of --cert-file")
    parser.add_argument("--server-name", help="host name to check the daemon's certificate against")
    args = parser.parse_args(argv)
    if (args.cert_file is None) != (args.key_file is None):
        parser.error("--cert-file and --key-file go together")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv[1:])
    try:
        transport, target = Transport(), args.target
        if args.config is not None:
            settings = daemon_settings(args.config)
            transport = transport_from_settings(settings)
            if target is None and settings["listen"]:
                target = target_from_listen(settings["listen"])
        transport = Transport(ca_file=args.ca_file or transport.ca_file,
                              cert_file=args.cert_file or transport.cert_file,
                              key_file=args.key_file or transport.key_file,
                              server_name=args.server_name or transport.server_name)
        target = target or DEFAULT_TARGET
        status = check(target, args.timeout_s, transport)
    except ProbeError as exc:
        print(f"healthcheck: {exc}", file=sys.stderr)
        return 1
    if status != "SERVING":
        print(f"{target}: {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
