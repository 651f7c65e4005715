"""Certificate revocation for mutual TLS: the X.509 CRL named by the setting `tls_crl_file`,
checked by the auth interceptor (shared/auth.py) against the peer certificate of every RPC.

At start the CRL must be readable, signed by a CA in `tls_client_ca_file` and not past its
next-update time, or the daemon does not start (a ConfigError naming the setting). Afterwards
it is read again, at most once per `recheck_s`, when the CRL or the CA file changes; a new file
that fails any of those checks is ignored with a rate-limited warning and the previous list
stays in force. A list in force whose next-update time passes is still enforced (the serials on
it stay revoked), with a rate-limited warning to re-sign it (`edgecascade certs crl`).
"""

from __future__ import annotations

import datetime
import functools
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from cryptography import x509

from shared.errors import ConfigError, UnauthenticatedError
from shared.tls import file_stamp
from shared.undecodable_requests import RateLimitedLog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedCrl:
    """The serials a CRL revokes, and when its issuer promised the next one."""

    serials: frozenset[int]
    next_update: Optional[datetime.datetime]

    def expired(self, now: datetime.datetime) -> bool:
        return self.next_update is not None and now > self.next_update


def _utc(value: Optional[datetime.datetime]) -> Optional[datetime.datetime]:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=datetime.timezone.utc)


def next_update_of(crl: x509.CertificateRevocationList) -> Optional[datetime.datetime]:
    """The CRL's next-update time in UTC (cryptography < 42 has only the naive attribute)."""
    aware = getattr(crl, "next_update_utc", None)
    return aware if aware is not None else _utc(crl.next_update)


def signed_by(crl: x509.CertificateRevocationList, authorities: list[x509.Certificate]) -> bool:
    """Whether one of `authorities` issued `crl` and its signature verifies with that CA's key."""
    for authority in authorities:
        if authority.subject != crl.issuer:
            continue
        try:
            if crl.is_signature_valid(authority.public_key()):  # type: ignore[arg-type]
                return True
        except (TypeError, ValueError):  # a CA key type that cannot sign CRLs
            continue
    return False


def load_crl(crl_file: Path, ca_file: Path, *, now: Optional[datetime.datetime] = None) -> LoadedCrl:
    """The CRL at `crl_file`, checked against the CA(s) in `ca_file`; a ConfigError naming
    `tls_crl_file` when it cannot be read, is not a CRL, is not signed by such a CA or expired."""
    where = f"setting 'tls_crl_file': {crl_file}"
    try:
        crl_bytes = Path(crl_file).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read ({exc.strerror or exc})") from None
    try:
        authorities = x509.load_pem_x509_certificates(Path(ca_file).read_bytes())
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read tls_client_ca_file {ca_file} to check it "
                          f"({exc.strerror or exc})") from None
    except ValueError:
        raise ConfigError(f"{where}: tls_client_ca_file {ca_file} holds no PEM certificate to check it") from None
    try:
        crl = x509.load_pem_x509_crl(crl_bytes)
    except ValueError:
        raise ConfigError(f"{where}: not a PEM certificate revocation list") from None
    if not signed_by(crl, authorities):
        raise ConfigError(f"{where}: not signed by a CA in tls_client_ca_file {ca_file}")
    loaded = LoadedCrl(frozenset(entry.serial_number for entry in crl), next_update_of(crl))
    if loaded.expired(now or datetime.datetime.now(datetime.timezone.utc)):
        raise ConfigError(f"{where}: expired at {loaded.next_update:%Y-%m-%d %H:%M:%S} UTC "
                          "(re-sign it, e.g. `edgecascade certs crl`)")
    return loaded


@functools.lru_cache(maxsize=1024)
def certificate_serial(pem: bytes) -> Optional[tuple[int, str]]:
    """(serial, common name) of a peer certificate in PEM, parsed once per certificate; None
    when it does not parse (gRPC verified it, so that does not happen in practice)."""
    from cryptography.x509.oid import NameOID

    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return cert.serial_number, str(names[0].value) if names else cert.subject.rfc4514_string()


class RevocationList:
    """The revoked serials in force: `check(pem)` refuses a revoked peer certificate."""

    def __init__(self, crl_file: Path, ca_file: Path, *, recheck_s: float = 1.0,
                 warning_interval_s: float = 60.0) -> None:
        self.crl_file, self.ca_file = Path(crl_file), Path(ca_file)
        self.recheck_s = recheck_s
        self._stamp = file_stamp([self.crl_file, self.ca_file])
        self._loaded = load_crl(self.crl_file, self.ca_file)
        self._checked_s = time.monotonic()
        self._lock = threading.Lock()
        self._warnings = RateLimitedLog(log, interval_s=warning_interval_s)

    @property
    def serials(self) -> frozenset[int]:
        return self._loaded.serials

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked_s < self.recheck_s:
            return
        with self._lock:
            if now - self._checked_s < self.recheck_s:
                return
            self._checked_s = now
            stamp = file_stamp([self.crl_file, self.ca_file])
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._loaded = load_crl(self.crl_file, self.ca_file)
                except ConfigError as exc:
                    self._warnings.warning("CRL changed but cannot be used, keeping the previous one "
                                           "(%d revoked serial(s)): %s", len(self._loaded.serials), exc)
                    return
                log.info("CRL %s reloaded: %d revoked serial(s)", self.crl_file, len(self._loaded.serials))
                return
            if self._loaded.expired(datetime.datetime.now(datetime.timezone.utc)):
                self._warnings.warning("CRL %s expired at %s and is still enforced: re-sign it (`edgecascade certs "
                                       "crl`)", self.crl_file, self._loaded.next_update)

    def check(self, pem: bytes) -> None:
        """UnauthenticatedError when the certificate's serial is on the CRL in force."""
        self._refresh()
        parsed = certificate_serial(pem)
        if parsed is not None and parsed[0] in self._loaded.serials:
            serial, name = parsed
            raise UnauthenticatedError(f"certificate serial {serial:x} ({name}) was revoked (tls_crl_file)")
