"""Who may call what: roles, the credentials that carry them, and the one server interceptor
that checks them on both daemons.

Roles:
- `infer`: applications. Inference (edgecascade.v1 `Infer`, every KServe v2 RPC) and the
  agent's `GetStatus`.
- `agent`: edge agents talking to a router. Deferred `Infer`, `Heartbeat`, the update calls an
  agent makes (`GetUpdateNotice`, `FetchPatchChunk`, `ReportUpdateState`), the router's
  `GetStatus`.
- `admin`: operators. `PublishUpdate` (push and rollback), fleet and rollout reads
  (`GetFleet`, `GetRolloutStatus`), both daemons' `GetStatus`. Not inference.

Credentials: a bearer token (`authorization: Bearer <token>` metadata), looked up by its SHA-256
in the tokens file (`auth_tokens_file`, which never holds a token itself), or a client
certificate that the daemon's `tls_client_ca_file` verified, whose subject names the holder
(common name) and its roles (one organizational unit per role). A token, when sent, decides.

Checks are on when a daemon has a tokens file or checks client certificates. Then a call with
no credentials, an unknown token, a certificate without roles or a revoked certificate (on the
CRL of `tls_crl_file`, shared/crl.py; checked whether or not a token is sent) gets
UNAUTHENTICATED, and a caller without the method's role PERMISSION_DENIED, both raised as the
typed errors of shared/errors.py and sent by `shared.grpc_errors.abort_with`. The health service
is open to everyone (probes); reflection to every authenticated caller. Nothing here logs a
token or its hash.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import grpc
import yaml

from shared.crl import RevocationList
from shared.errors import ConfigError, EdgecascadeError, PermissionDeniedError, UnauthenticatedError
from shared.grpc_errors import abort_with
from shared.interceptors import guarded
from shared.tls import AUTHORIZATION_KEY, file_stamp
from shared.undecodable_requests import RateLimitedLog

log = logging.getLogger(__name__)

ROLES = ("infer", "agent", "admin")

_AGENT = "/edgecascade.v1.EdgeAgent/"
_ROUTER = "/edgecascade.v1.CloudRouter/"
_KSERVE = "/inference.GRPCInferenceService/"

#: Full method name -> the roles that may call it. A method in neither this table nor
#: PUBLIC_METHODS / ANY_ROLE_SERVICES is refused to everyone.
METHOD_ROLES: dict[str, frozenset[str]] = {
    _AGENT + "Infer": frozenset({"infer"}),
    _AGENT + "GetStatus": frozenset({"infer", "admin"}),
    _AGENT + "Generate": frozenset({"infer"}),
    _ROUTER + "Infer": frozenset({"infer", "agent"}),
    _ROUTER + "Generate": frozenset({"infer", "agent"}),
    _ROUTER + "GetStatus": frozenset({"agent", "admin"}),
    _ROUTER + "Heartbeat": frozenset({"agent"}),
    _ROUTER + "GetFleet": frozenset({"admin"}),
    _ROUTER + "PublishUpdate": frozenset({"admin"}),
    _ROUTER + "GetUpdateNotice": frozenset({"agent"}),
    _ROUTER + "FetchPatchChunk": frozenset({"agent"}),
    _ROUTER + "ReportUpdateState": frozenset({"agent"}),
    _ROUTER + "GetRolloutStatus": frozenset({"admin"}),
    **{_KSERVE + name: frozenset({"infer"}) for name in (
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer", "ModelStreamInfer")},
}
PUBLIC_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})
ANY_ROLE_SERVICES = ("/grpc.reflection.v1alpha.ServerReflection/", "/grpc.reflection.v1.ServerReflection/")

TOKEN_PREFIX = "ect_"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a name for logs and limits, its roles, where they came from."""

    name: str
    roles: frozenset[str]
    source: str  # "token" or "certificate"


#: The caller of the RPC being served (set by AuthInterceptor; None when checks are off).
current_principal: contextvars.ContextVar[Optional[Principal]] = contextvars.ContextVar("principal", default=None)


# ------------------------------------------------------------------------------------- tokens


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def _parse_tokens(path: Path) -> dict[str, Principal]:
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"tokens file {path} not found") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"tokens file {path}: cannot read it: {exc}") from None
    entries = loaded.get("tokens") if isinstance(loaded, dict) else None
    if not isinstance(entries, list):
        raise ConfigError(f"tokens file {path}: expected a mapping with a 'tokens' list")
    table: dict[str, Principal] = {}
    for number, entry in enumerate(entries, 1):
        where = f"tokens file {path}, entry {number}"
        if not isinstance(entry, dict) or set(entry) - {"name", "roles", "sha256"}:
            raise ConfigError(f"{where}: expected name, roles and sha256")
        name, roles, digest = entry.get("name"), entry.get("roles"), str(entry.get("sha256", "")).lower()
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: 'name' must be a non-empty string")
        if not isinstance(roles, list) or not roles or not set(roles) <= set(ROLES):
            raise ConfigError(f"{where} ({name}): 'roles' must be a non-empty list of {list(ROLES)}")
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ConfigError(f"{where} ({name}): 'sha256' must be the 64-hex-digit SHA-256 of the token")
        if digest in table:
            raise ConfigError(f"{where} ({name}): the same token is listed twice")
        table[digest] = Principal(name, frozenset(roles), "token")
    return table


class TokenTable:
    """The tokens file, read again (at most once a second) when it changes, so tokens are added
    and revoked without a restart. A file that no longer parses keeps the previous table."""

    def __init__(self, path: Path, *, recheck_s: float = 1.0) -> None:
        self.path = Path(path)
        self.recheck_s = recheck_s
        self._table = _parse_tokens(self.path)
        self._stamp = self._file_stamp()
        self._checked_s = time.monotonic()
        self._lock = threading.Lock()

    def _file_stamp(self) -> Any:
        return file_stamp([self.path])

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked_s < self.recheck_s:
            return
        with self._lock:
            self._checked_s = now
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return
            try:
                self._table = _parse_tokens(self.path)
            except ConfigError as exc:
                log.warning("tokens file changed but is not valid, keeping the previous tokens: %s", exc)
                return
            finally:
                self._stamp = stamp
            log.info("tokens file %s reloaded: %d token(s)", self.path, len(self._table))

    def lookup(self, token: str) -> Optional[Principal]:
        self._refresh()
        return self._table.get(token_digest(token))

    def __len__(self) -> int:
        return len(self._table)


def add_token(path: Path, name: str, roles: Iterable[str]) -> str:
    """Make a new token for `name` with `roles`, list its SHA-256 in the tokens file at `path`
    (created 0600 if missing), and return the token (shown once, stored nowhere)."""
    roles = list(dict.fromkeys(roles))
    if not roles or not set(roles) <= set(ROLES):
        raise ConfigError(f"roles must be one or more of {list(ROLES)}, got {roles}")
    path = Path(path)
    entries: list = []
    if path.exists():
        _parse_tokens(path)  # refuse to extend a broken file
        entries = (yaml.safe_load(path.read_text()) or {}).get("tokens", [])
    token = new_token()
    entries.append({"name": name, "roles": roles, "sha256": token_digest(token)})
    _write_tokens(path, entries)
    return token


def revoke_tokens(path: Path, name: str) -> int:
    """Remove every token of `name` from the tokens file; returns how many were removed."""
    _parse_tokens(Path(path))
    entries = (yaml.safe_load(Path(path).read_text()) or {}).get("tokens", [])
    kept = [e for e in entries if e.get("name") != name]
    _write_tokens(Path(path), kept)
    return len(entries) - len(kept)


def _write_tokens(path: Path, entries: list) -> None:
    text = ("# edgecascade tokens file (auth_tokens_file): the SHA-256 of each token, never the token.\n"
            + yaml.safe_dump({"tokens": entries}, sort_keys=False))
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"cannot write tokens file {path}: {exc.strerror or exc}") from None


# ------------------------------------------------------------------------------- certificates


@functools.lru_cache(maxsize=256)
def _certificate_principal(pem: bytes) -> Optional[Principal]:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    roles = {str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)}
    name = str(names[0].value) if names else cert.subject.rfc4514_string()
    return Principal(name, frozenset(roles & set(ROLES)), "certificate")


# -------------------------------------------------------------------------------- the checks


class Authenticator:
    """Turns one call's metadata and TLS peer into a Principal, or an UnauthenticatedError."""

    def __init__(self, tokens: Optional[TokenTable], *, certificates: bool,
                 revocations: Optional[RevocationList] = None) -> None:
        self.tokens = tokens
        self.certificates = certificates
        self.revocations = revocations

    def authenticate(self, metadata: Iterable[tuple[str, Any]], auth_context: dict) -> Principal:
        pems = auth_context.get("x509_pem_cert") if self.certificates else None
        if pems and self.revocations is not None:  # a revoked certificate is refused even with a token
            self.revocations.check(bytes(pems[0]))
        header = None
        for key, value in metadata or ():
            if key == AUTHORIZATION_KEY:
                header = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
                break
        if header is not None:
            scheme, _, token = header.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise UnauthenticatedError("the authorization metadata must be 'Bearer <token>'")
            if self.tokens is None:
                raise UnauthenticatedError("this daemon takes no bearer tokens")
            principal = self.tokens.lookup(token.strip())
            if principal is None:
                raise UnauthenticatedError("unknown or revoked token")
            return principal
        if pems:
            principal = _certificate_principal(bytes(pems[0]))
            if principal is None or not principal.roles:
                raise UnauthenticatedError(f"client certificate of {principal.name if principal else '?'} names no "
                                           f"role (organizational unit {'/'.join(ROLES)})")
            return principal
        raise UnauthenticatedError("no credentials: send 'authorization: Bearer <token>' metadata or a client certificate")

    @staticmethod
    def authorize(principal: Principal, method: str) -> None:
        if method.startswith(ANY_ROLE_SERVICES):
            return
        allowed = METHOD_ROLES.get(method, frozenset())
        if not principal.roles & allowed:
            raise PermissionDeniedError(
                f"{principal.name} ({', '.join(sorted(principal.roles)) or 'no role'}) may not call "
                f"{method.rsplit('/', 1)[-1]}; it needs one of: {', '.join(sorted(allowed)) or 'none'}")


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """The one place both daemons check credentials and roles (see the module docstring)."""

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator
        self._log = RateLimitedLog(log, interval_s=10.0)
        self.refused = 0

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method in PUBLIC_METHODS:
            return handler

        @contextlib.asynccontextmanager
        async def check(context: grpc.aio.ServicerContext):
            try:
                principal = self.authenticator.authenticate(context.invocation_metadata(), context.auth_context())
                self.authenticator.authorize(principal, method)
            except EdgecascadeError as exc:  # UnauthenticatedError or PermissionDeniedError
                self.refused += 1
                self._log.warning("refused %s from %s: %s %s", method, _peer_host(context.peer()), exc.code.name, exc)
                await abort_with(context, exc)
            current_principal.set(principal)
            yield

        return guarded(handler, check)


def _peer_host(peer: str) -> str:
    """'ipv4:10.0.0.5:41234' -> '10.0.0.5' (the port changes per connection)."""
    kind, _, rest = (peer or "").partition(":")
    if kind in ("ipv4", "ipv6"):
        return rest.rsplit(":", 1)[0].strip("[]")
    return peer or "?"


def peer_host(context: grpc.aio.ServicerContext) -> str:
    return _peer_host(context.peer())


def server_interceptors(settings: Any, *, daemon: str) -> list[grpc.aio.ServerInterceptor]:
    """[AuthInterceptor] when the settings name a tokens file or check client certificates;
    [] (with a warning) when they do not, so every caller may call every RPC. A ConfigError
    naming the setting when `tls_crl_file` is set without `tls_client_ca_file` or is unusable."""
    tokens = TokenTable(settings.auth_tokens_file) if settings.auth_tokens_file else None
    certificates = settings.tls_client_ca_file is not None
    crl_file = getattr(settings, "tls_crl_file", None)
    if crl_file is not None and not certificates:
        raise ConfigError("setting 'tls_crl_file' needs tls_client_ca_file (mutual TLS): the CRL revokes client "
                          "certificates that CA signed")
    revocations = RevocationList(crl_file, settings.tls_client_ca_file) if crl_file is not None else None
    if tokens is None and not certificates:
        log.warning("%s checks no credentials (no auth_tokens_file, no tls_client_ca_file): anyone who reaches its "
                    "port may call every RPC, including update and fleet RPCs", daemon)
        return []
    log.info("%s checks credentials: %s", daemon,
             " and ".join(filter(None, [f"{len(tokens)} token(s) from {settings.auth_tokens_file}" if tokens else "",
                                        "client certificate roles" if certificates else "",
                                        f"revocations ({len(revocations.serials)} revoked serial(s) in {crl_file})"
                                        if revocations else ""])))
    return [AuthInterceptor(Authenticator(tokens, certificates=certificates, revocations=revocations))]
