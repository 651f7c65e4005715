"""Security settings both daemons share (their settings classes inherit these fields), and the
edge agent's settings for its link to the router. See shared/tls.py and shared/auth.py."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import Field
from pydantic_settings import BaseSettings

from shared.errors import ConfigError
from shared.tls import ClientSecurity, ServerSecurity


class ServerSecuritySettings(BaseSettings):
    tls_cert_file: Optional[Path] = None
    """PEM certificate (chain) of this daemon's gRPC port. With tls_key_file, the port serves TLS.
    Read again at the next handshake after the file changes (rotation without a restart)."""
    tls_key_file: Optional[Path] = None
    """PEM private key of tls_cert_file."""
    tls_client_ca_file: Optional[Path] = None
    """PEM CA that client certificates must chain to (mutual TLS): set, every caller must present
    a certificate it signed, and the certificate's organizational units are the caller's roles."""
    tls_crl_file: Optional[Path] = None
    """PEM X.509 certificate revocation list (`edgecascade certs revoke` writes one) signed by a
    CA in tls_client_ca_file, which it needs. Set, every RPC whose client certificate's serial is
    on it gets UNAUTHENTICATED ("certificate serial ... was revoked"), even with a token; the
    health-only plaintext port is not affected. Unreadable, badly signed or past its next-update
    time at start: the daemon does not start. Read again within a second after it (or the CA
    file) changes; a changed file that fails those checks is ignored with a warning and the
    previous list stays in force."""
    plaintext: bool = False
    """Serve without TLS (and, on an agent, reach the router without TLS when no cloud_tls_* file
    is set). Off by default: a daemon with neither TLS files nor this setting does not start.
    Logs a warning at start; use it only on loopback or a network you trust."""
    auth_tokens_file: Optional[Path] = None
    """YAML file listing the SHA-256 of each accepted bearer token with its name and roles
    (`edgecascade token add`). Reloaded when it changes. With it or tls_client_ca_file set, every
    RPC except health checks needs credentials with the right role (shared/auth.py)."""
    health_listen: Optional[str] = None
    """host:port of an extra plaintext port that serves only grpc.health.v1 (same statuses as the
    main port), for probes that cannot speak TLS, such as Kubernetes' gRPC probes. None: none."""
    max_concurrent_rpcs: Optional[int] = Field(default=4096, ge=1)
    """RPCs served at once on the gRPC port; more are refused with RESOURCE_EXHAUSTED by gRPC, so
    overload cannot grow memory without bound. None: no limit."""

    def server_security(self) -> ServerSecurity:
        return ServerSecurity.of(self)


class CloudLinkSecuritySettings(BaseSettings):
    cloud_tls_ca_file: Optional[Path] = None
    """PEM CA that the router's certificate must chain to. Set it (or cloud_tls_cert_file) to reach
    the router over TLS; with neither, the agent reaches it in plaintext only if plaintext is set.
    Like every cloud_tls_* file and cloud_token_file, read again before a call to the router (at
    most once a second) after it changes: new calls use the new files once they load
    (shared/rotating_channel.py), so rotating them needs no restart."""
    cloud_tls_cert_file: Optional[Path] = None
    """PEM client certificate the agent presents to the router (mutual TLS; role `agent`)."""
    cloud_tls_key_file: Optional[Path] = None
    """PEM private key of cloud_tls_cert_file. A key that is not the certificate's is refused
    (logged) and the previous pair stays in use."""
    cloud_tls_server_name: Optional[str] = None
    """Host name to check the router's certificate against, when it differs from cloud_target's host."""
    cloud_token_file: Optional[Path] = None
    """File holding the bearer token (role `agent`) sent to the router on every call; read again
    when it changes, like the cloud_tls_* files."""

    def cloud_security(self, plaintext: bool) -> Optional[ClientSecurity]:
        """How the agent reaches its router; a ConfigError naming the settings when nothing says."""
        if not (self.cloud_tls_ca_file or self.cloud_tls_cert_file) and not plaintext:
            raise ConfigError("no TLS configured for the link to cloud_target: set cloud_tls_ca_file (and "
                              "cloud_tls_cert_file and cloud_tls_key_file for mutual TLS), or plaintext: true")
        return ClientSecurity.from_files(ca_file=self.cloud_tls_ca_file, cert_file=self.cloud_tls_cert_file,
                                         key_file=self.cloud_tls_key_file, token_file=self.cloud_token_file,
                                         plaintext=plaintext, server_name=self.cloud_tls_server_name)
