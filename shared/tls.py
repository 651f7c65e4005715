"""Transport security for every gRPC port and channel: TLS, mutual TLS, explicit plaintext.

Servers: `bind_server(server, listen, security)` binds with TLS when a certificate and key are
configured, and checks client certificates against `tls_client_ca_file` when that is set
(mutual TLS). Without a certificate it binds in plaintext only when `plaintext: true` was set,
and logs a warning; otherwise start-up stops with an error that names the settings. The
certificate files are read again on the next handshake after they change, so a rotated
certificate takes effect without a restart.

Clients: `open_channel(target, ...)` / `open_aio_channel(...)` with a `ClientSecurity` (TLS files
and an optional bearer token) or plaintext when `security` is None. A client reads its files when
the channel is opened; `shared.rotating_channel.RotatingChannel` opens a new channel when they
change (the edge agent's links to its router).
"""

from __future__ import annotations

import collections
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import grpc

from shared.errors import ConfigError

log = logging.getLogger(__name__)

#: Metadata key of the bearer token (lower case, as gRPC requires).
AUTHORIZATION_KEY = "authorization"


#: (mtime in ns, size, inode) of each of some files, None where one cannot be read now.
FileStamp = tuple[Optional[tuple[int, int, int]], ...]


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read ({exc.strerror or exc})") from None


def file_stamp(paths: Sequence[Path]) -> FileStamp:
    """What says that one of `paths` changed: a replaced (renamed over), rewritten or removed file
    gets another stamp."""
    stamp: list[Optional[tuple[int, int, int]]] = []
    for path in paths:
        try:
            st = os.stat(path)
            stamp.append((st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            stamp.append(None)
    return tuple(stamp)


# --------------------------------------------------------------------------------------- server


@dataclass(frozen=True)
class ServerSecurity:
    """What a daemon's gRPC port needs to know about transport security (from its settings)."""

    cert_file: Optional[Path] = None
    key_file: Optional[Path] = None
    client_ca_file: Optional[Path] = None
    plaintext: bool = False

    @classmethod
    def of(cls, settings: Any) -> "ServerSecurity":
        return cls(cert_file=settings.tls_cert_file, key_file=settings.tls_key_file,
                   client_ca_file=settings.tls_client_ca_file, plaintext=settings.plaintext)

    @property
    def uses_tls(self) -> bool:
        return self.cert_file is not None

    def check(self) -> None:
        """A ConfigError naming the settings when the combination cannot be served."""
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("settings 'tls_cert_file' and 'tls_key_file' go together: set both or neither")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ConfigError("setting 'tls_client_ca_file' needs TLS: set tls_cert_file and tls_key_file too")
        if self.cert_file is None and not self.plaintext:
            raise ConfigError("no TLS configured: set tls_cert_file and tls_key_file (see `edgecascade certs init`), "
                              "or set plaintext: true to serve without TLS")


class _ReloadingCertificates:
    """gRPC asks for the server certificate at each handshake; hand it a new configuration only
    when one of the files changed since the last one (rotation without a restart)."""

    def __init__(self, security: ServerSecurity) -> None:
        self.security = security
        self._paths = [p for p in (security.cert_file, security.key_file, security.client_ca_file) if p]
        self._stamp = file_stamp(self._paths)
        self.initial = self._configuration()

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        security = self.security
        if security.key_file is None or security.cert_file is None:  # ServerSecurity.check() refuses this before a bind
            raise ConfigError("settings 'tls_cert_file' and 'tls_key_file': TLS needs both")
        pair = (_read(security.key_file, "tls_key_file"), _read(security.cert_file, "tls_cert_file"))
        root = _read(security.client_ca_file, "tls_client_ca_file") if security.client_ca_file else None
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=root)

    def __call__(self) -> Optional[grpc.ServerCertificateConfiguration]:
        stamp = file_stamp(self._paths)
        if stamp == self._stamp:
            return None
        try:
            configuration = self._configuration()
        except ConfigError as exc:  # half-written files: keep serving the old ones, try at the next handshake
            log.warning("TLS files changed but cannot be loaded yet, still using the previous ones: %s", exc)
            return None
        self._stamp = stamp
        log.info("TLS certificate files changed: new handshakes use them")
        return configuration


def server_credentials(security: ServerSecurity) -> grpc.ServerCredentials:
    fetcher = _ReloadingCertificates(security)
    return grpc.dynamic_ssl_server_credentials(fetcher.initial, fetcher,
                                               require_client_authentication=security.client_ca_file is not None)


def bind_server(server: grpc.aio.Server, listen: str, security: ServerSecurity, *, daemon: str) -> int:
    """Bind `server` to host:port (0 picks a free port) with TLS, mutual TLS or explicit
    plaintext; returns the bound port."""
    security.check()
    from shared.listen import bind_failure

    try:
        if security.uses_tls:
            port = server.add_secure_port(listen, server_credentials(security))
        else:
            port = server.add_insecure_port(listen)
    except RuntimeError:  # grpcio >= 1.60 raises where older versions returned 0
        port = 0
    if port == 0:
        raise ConfigError(bind_failure(listen))
    if security.uses_tls:
        mode = "mutual TLS (client certificates checked against %s)" % security.client_ca_file \
            if security.client_ca_file else "TLS"
    else:
        mode = "plaintext"
    if security.uses_tls:
        log.info("%s port %d: %s", daemon, port, mode)
    else:
        log.warning("%s port %d serves PLAINTEXT (plaintext: true): traffic and tokens on it are readable by anyone "
                    "on the network path; configure tls_cert_file and tls_key_file outside a trusted network",
                    daemon, port)
    return port


# --------------------------------------------------------------------------------------- client


@dataclass(frozen=True)
class ClientSecurity:
    """How a client reaches a daemon: TLS files (CA to check the server; certificate and key to
    present for mutual TLS) and an optional bearer token. `tls=False` is plaintext (a token is
    then sent in clear)."""

    ca_file: Optional[Path] = None
    cert_file: Optional[Path] = None
    key_file: Optional[Path] = None
    token: Optional[str] = field(default=None, repr=False)
    server_name: Optional[str] = None
    tls: bool = True
    token_file: Optional[Path] = None
    """Where `token` was read from (`from_files`), so that a changed file can be read again."""

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("a client certificate and its key go together: give both or neither")
        if not self.tls and (self.ca_file or self.cert_file):
            raise ConfigError("TLS files given for a plaintext channel")

    @classmethod
    def from_files(cls, *, ca_file: Optional[Path] = None, cert_file: Optional[Path] = None,
                   key_file: Optional[Path] = None, token_file: Optional[Path] = None, plaintext: bool = False,
                   server_name: Optional[str] = None) -> Optional["ClientSecurity"]:
        """None (plain channel, no token) when nothing is given and `plaintext` is set; a
        ConfigError when nothing is given and plaintext is not allowed."""
        token = read_token_file(token_file) if token_file else None
        if not (ca_file or cert_file) and not plaintext:
            raise ConfigError("no TLS configured for the connection: give a CA file (and for mutual TLS a certificate "
                              "and key), or allow plaintext explicitly")
        if not (ca_file or cert_file) and token is None:
            return None
        return cls(ca_file=ca_file, cert_file=cert_file, key_file=key_file, token=token, server_name=server_name,
                   tls=bool(ca_file or cert_file), token_file=token_file)

    def files(self) -> list[Path]:
        """The files a channel is built from (TLS files, token file), in a fixed order."""
        return [p for p in (self.ca_file, self.cert_file, self.key_file, self.token_file) if p is not None]

    def read_tls_files(self) -> "ClientTLSFiles":
        """The TLS files' contents, each read once; a ConfigError naming a file that cannot be read."""
        return ClientTLSFiles(ca=_read(self.ca_file, "CA file") if self.ca_file else None,
                              key=_read(self.key_file, "client key file") if self.key_file else None,
                              cert_chain=_read(self.cert_file, "client certificate file") if self.cert_file else None)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return self.read_tls_files().credentials()

    def channel_options(self) -> list[tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


@dataclass(frozen=True)
class ClientTLSFiles:
    """The contents of a client's TLS files (None: not configured)."""

    ca: Optional[bytes] = field(default=None, repr=False)
    key: Optional[bytes] = field(default=None, repr=False)
    cert_chain: Optional[bytes] = field(default=None, repr=False)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self.key,
                                            certificate_chain=self.cert_chain)


def read_token_file(path: Path) -> str:
    token = _read(path, "token file").decode(errors="replace").strip()
    if not token or any(c.isspace() for c in token):
        raise ConfigError(f"token file {path}: expected one token on one line")
    return token


class _SyncDetails(collections.namedtuple(
        "_SyncDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")),
        grpc.ClientCallDetails):
    pass


class _SyncTokenInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                            grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call of a blocking channel."""

    def __init__(self, token: str) -> None:
        self._pair = (AUTHORIZATION_KEY, f"Bearer {token}")

    def _details(self, details: Any) -> Any:
        return _SyncDetails(details.method, details.timeout, list(details.metadata or ()) + [self._pair],
                            details.credentials, getattr(details, "wait_for_ready", None),
                            getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)


def _aio_interceptors(token: str) -> list:
    pair = (AUTHORIZATION_KEY, f"Bearer {token}")

    def details(d: Any) -> Any:
        return grpc.aio.ClientCallDetails(d.method, d.timeout, list(d.metadata or ()) + [pair], d.credentials,
                                          d.wait_for_ready)

    class UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
        async def intercept_unary_unary(self, continuation, client_call_details, request):
            return await continuation(details(client_call_details), request)

    class UnaryStream(grpc.aio.UnaryStreamClientInterceptor):
        async def intercept_unary_stream(self, continuation, client_call_details, request):
            return await continuation(details(client_call_details), request)

    class StreamUnary(grpc.aio.StreamUnaryClientInterceptor):
        async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
            return await continuation(details(client_call_details), request_iterator)

    class StreamStream(grpc.aio.StreamStreamClientInterceptor):
        async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
            return await continuation(details(client_call_details), request_iterator)

    return [UnaryUnary(), UnaryStream(), StreamUnary(), StreamStream()]


def open_channel(target: str, security: Optional[ClientSecurity] = None,
                 options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """A blocking channel: TLS (and a token) per `security`, plaintext when it is None or tls=False."""
    options = list(options) + (security.channel_options() if security else [])
    if security is not None and security.tls:
        channel = grpc.secure_channel(target, security.channel_credentials(), options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    if security is not None and security.token:
        channel = grpc.intercept_channel(channel, _SyncTokenInterceptor(security.token))
    return channel


def open_aio_channel(target: str, security: Optional[ClientSecurity] = None,
                     options: Sequence[tuple[str, Any]] = (), *,
                     tls_files: Optional[ClientTLSFiles] = None) -> grpc.aio.Channel:
    """An asyncio channel: TLS (and a token) per `security`, plaintext when it is None or tls=False.
    `tls_files`: the TLS files' contents when the caller has read (and checked) them already."""
    options = list(options) + (security.channel_options() if security else [])
    interceptors = _aio_interceptors(security.token) if security is not None and security.token else None
    if security is not None and security.tls:
        files = tls_files if tls_files is not None else security.read_tls_files()
        return grpc.aio.secure_channel(target, files.credentials(), options=options, interceptors=interceptors)
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
