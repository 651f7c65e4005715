"""`edgecascade certs init|issue|revoke|crl`: a development certificate authority, the
certificates the daemons and their clients need, and its certificate revocation list, made with
the `cryptography` package (ECDSA P-256 keys).

Every certificate names its holder in the subject's common name and its roles (`infer`,
`agent`, `admin`; see shared/auth.py) in organizational-unit attributes, one per role. A daemon
that checks client certificates against this CA (`tls_client_ca_file`) takes those roles as the
caller's rights. Every certificate is good for both ends of a connection (server and client
authentication) and names the hosts it serves (`--host`), so an agent can use its own for its
port and for its link to the router. For production, use your own CA and give the daemons
paths to its files; this module is for local runs and tests.

Revocation: `crl.pem` next to the CA is an X.509 CRL signed by the CA (`init` writes an empty
one). `revoke` adds a certificate's serial to it and `write_crl` re-signs it, each time good
for `days` (daemons refuse a CRL past that time at start, see shared/crl.py). It is written to
a temporary file and renamed, so a daemon reading it (`tls_crl_file`) never sees half of one.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.errors import ConfigError

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
CA_CRL = "crl.pem"
#: How long a CRL written here is good for, in days, unless told otherwise.
CRL_DAYS = 30
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
#: What `certs init` issues: file stem -> roles.
DEFAULT_HOLDERS: dict[str, tuple[str, ...]] = {
    "router": (),            # a server certificate only: routers take no client role
    "agent": ("agent",),     # an edge agent: its port, and its link to the router
    "admin": ("admin",),     # an operator: update push / rollback, fleet and rollout reads
    "app": ("infer",),       # an application: inference
}


@dataclass(frozen=True)
class Revoked:
    """What `revoke` did: the serial, whose certificate it was, and whether it was new."""

    serial: int
    holder: str
    crl_file: Path
    already_revoked: bool
    revoked_count: int


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


# ----------------------------------------------------------------------------------- revocation


def _read_crl(ca_dir: Path, ca_cert: x509.Certificate) -> tuple[list[x509.RevokedCertificate], int]:
    """The entries and CRL number of `<ca_dir>/crl.pem` ([] and 0 when there is none yet)."""
    from shared.crl import signed_by

    path = Path(ca_dir) / CA_CRL
    try:
        crl = x509.load_pem_x509_crl(path.read_bytes())
    except FileNotFoundError:
        return [], 0
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError:
        raise ConfigError(f"{path} is not a PEM certificate revocation list: move it away to start a new one") from None
    if not signed_by(crl, [ca_cert]):
        raise ConfigError(f"{path} is not signed by the CA in {ca_dir}: move it away to start a new one")
    try:
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = 0
    return list(crl), number


def write_crl(ca_dir: Path, *, add: Iterable[int] = (), days: int = CRL_DAYS) -> tuple[Path, int]:
    """Re-sign `<ca_dir>/crl.pem` with the CA: the serials on it so far plus `add`, good for
    `days`. Written atomically. Returns the path and how many serials it revokes."""
    if days < 1:
        raise ConfigError(f"a CRL must be good for at least 1 day, got --days {days}")
    ca_dir = Path(ca_dir)
    ca_cert, ca_key = _load_ca(ca_dir)
    entries, number = _read_crl(ca_dir, ca_cert)
    known = {entry.serial_number for entry in entries}
    now = _now()
    for serial in dict.fromkeys(add):
        if serial not in known:
            entries.append(x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build())
            known.add(serial)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
               .last_update(now - datetime.timedelta(minutes=5)).next_update(now + datetime.timedelta(days=days))
               .add_extension(x509.CRLNumber(number + 1), critical=False))
    for entry in entries:
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    path = ca_dir / CA_CRL
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path, len(entries)


def _parse_serial(text: str) -> int:
    digits = text.strip().lower().removeprefix("0x").replace(":", "")
    try:
        return int(digits, 16)
    except ValueError:
        raise ConfigError(f"serial {text!r}: expected hexadecimal digits (as `certs revoke` and daemons print them)") \
            from None


def _certificates_in(ca_dir: Path) -> list[tuple[x509.Certificate, str]]:
    """Every readable certificate in `ca_dir` with its file stem, the CA's own left out."""
    found = []
    for path in sorted(Path(ca_dir).glob("*.pem")):
        if path.name in (CA_CERT, CA_CRL):
            continue
        try:
            found.append((x509.load_pem_x509_certificate(path.read_bytes()), path.stem))
        except (OSError, ValueError):
            continue
    return found


def _holder(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()


def revoke(ca_dir: Path, *, name: str | None = None, cert_file: Path | None = None, serial: str | None = None,
           days: int = CRL_DAYS) -> Revoked:
    """Put one certificate of the CA in `ca_dir` on its CRL: the one in `<ca_dir>/<name>.pem`,
    the one in `cert_file`, or the one with hexadecimal `serial` (a certificate in `ca_dir`, or
    a serial already on the CRL). Revoking a revoked certificate changes nothing."""
    if sum(x is not None for x in (name, cert_file, serial)) != 1:
        raise ConfigError("name exactly one certificate to revoke: --name, --cert or --serial")
    ca_dir = Path(ca_dir)
    ca_cert, _ = _load_ca(ca_dir)
    revoked = {entry.serial_number for entry in _read_crl(ca_dir, ca_cert)[0]}
    if serial is not None:
        number = _parse_serial(serial)
        matches = [holder for cert, holder in _certificates_in(ca_dir)
                   if cert.serial_number == number and cert.issuer == ca_cert.subject]
        if not matches and number not in revoked:
            raise ConfigError(f"no certificate with serial {number:x} in {ca_dir}: give --cert FILE for one "
                              "kept elsewhere")
        holder = matches[0] if matches else "?"
    else:
        path = Path(cert_file) if cert_file is not None else ca_dir / f"{name}.pem"
        if name is not None and (not name or "/" in name or name.startswith(".")):
            raise ConfigError(f"certificate name {name!r}: use a plain file-name-safe name")
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except FileNotFoundError:
            where = f"no certificate named {name!r} in {ca_dir} ({path} is missing)" if name is not None \
                else f"certificate file {path} not found"
            raise ConfigError(where) from None
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
        except ValueError:
            raise ConfigError(f"{path} is not a PEM certificate") from None
        if cert.serial_number == ca_cert.serial_number and cert.subject == ca_cert.subject:
            raise ConfigError(f"{path} is the CA certificate itself: to replace the CA, rotate it (README, Security)")
        try:
            cert.verify_directly_issued_by(ca_cert)
        except (ValueError, TypeError, InvalidSignature):
            raise ConfigError(f"{path} was not issued by the CA in {ca_dir}") from None
        number, holder = cert.serial_number, _holder(cert)
    if number in revoked:
        return Revoked(number, holder, ca_dir / CA_CRL, True, len(revoked))
    crl_file, count = write_crl(ca_dir, add=[number], days=days)
    return Revoked(number, holder, crl_file, False, count)


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
    issued = [issue(out_dir, name, roles, hosts=hosts, days=days) for name, roles in DEFAULT_HOLDERS.items()]
    (out_dir / CA_CRL).unlink(missing_ok=True)  # a CRL of a replaced CA would not verify
    write_crl(out_dir)
    return issued
