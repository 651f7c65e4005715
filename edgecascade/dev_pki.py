"""`edgecascade certs init|issue`: a development certificate authority and the certificates the
daemons and their clients need, made with the `cryptography` package (ECDSA P-256 keys).

Every certificate names its holder in the subject's common name and its roles (`infer`,
`agent`, `admin`; see shared/auth.py) in organizational-unit attributes, one per role. A daemon
that checks client certificates against this CA (`tls_client_ca_file`) takes those roles as the
caller's rights. Every certificate is good for both ends of a connection (server and client
authentication) and names the hosts it serves (`--host`), so an agent can use its own for its
port and for its link to the router. For production, use your own CA and give the daemons
paths to its files; this module is for local runs and tests.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.errors import ConfigError

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
#: What `certs init` issues: file stem -> roles.
DEFAULT_HOLDERS: dict[str, tuple[str, ...]] = {
    "router": (),            # a server certificate only: routers take no client role
    "agent": ("agent",),     # an edge agent: its port, and its link to the router
    "admin": ("admin",),     # an operator: update push / rollback, fleet and rollout reads
    "app": ("infer",),       # an application: inference
}


@dataclass(frozen=True)
class Issued:
    name: str
    cert_file: Path
    key_file: Path
    roles: tuple[str, ...]


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(path, 0o600)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _san(hosts: Iterable[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def make_ca(out_dir: Path, *, days: int = 3650, name: str = "edgecascade dev CA") -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5)).not_valid_after(_now() + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_private(out_dir / CA_KEY, _key_pem(key))
    (out_dir / CA_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return out_dir / CA_CERT, out_dir / CA_KEY


def _load_ca(ca_dir: Path):
    try:
        cert = x509.load_pem_x509_certificate((Path(ca_dir) / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((Path(ca_dir) / CA_KEY).read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise ConfigError(f"no CA in {ca_dir}: {exc.filename} is missing (run `edgecascade certs init` first)") from None
    except ValueError as exc:
        raise ConfigError(f"{ca_dir}: not a CA certificate and key this command can read: {exc}") from None
    return cert, key


def issue(ca_dir: Path, name: str, roles: Sequence[str], *, out_dir: Path | None = None,
          hosts: Sequence[str] = DEFAULT_HOSTS, days: int = 365) -> Issued:
    """A key and a certificate for `name` with `roles`, signed by the CA in `ca_dir`; written as
    `<out_dir>/<name>.pem` and `<name>.key` (out_dir defaults to ca_dir)."""
    from shared.auth import ROLES

    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise ConfigError(f"unknown role(s) {unknown}; known: {list(ROLES)}")
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"certificate name {name!r}: use a plain file-name-safe name")
    ca_cert, ca_key = _load_ca(ca_dir)
    out_dir = Path(out_dir or ca_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, name)]
    attributes += [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role) for role in roles]
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name(attributes)).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5)).not_valid_after(_now() + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(_san(hosts), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_file, key_file = out_dir / f"{name}.pem", out_dir / f"{name}.key"
    _write_private(key_file, _key_pem(key))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Issued(name, cert_file, key_file, tuple(roles))


def init(out_dir: Path, *, hosts: Sequence[str] = DEFAULT_HOSTS, days: int = 365, force: bool = False) -> list[Issued]:
    """A new CA in `out_dir` and one certificate for each of DEFAULT_HOLDERS."""
    out_dir = Path(out_dir)
    if (out_dir / CA_KEY).exists() and not force:
        raise ConfigError(f"{out_dir / CA_KEY} exists: use `certs issue` to add certificates to that CA, "
                          "or --force to replace the CA and every certificate")
    try:
        make_ca(out_dir, days=max(days, 3650))
    except PermissionError as exc:
        raise ConfigError(f"cannot write to {out_dir}: {exc.strerror}") from None
    return [issue(out_dir, name, roles, hosts=hosts, days=days) for name, roles in DEFAULT_HOLDERS.items()]
